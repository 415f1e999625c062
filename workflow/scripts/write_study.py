"""Rule `study`: write the study file whose content Snakemake passes as params (canonical JSON)."""

import json
import logging

from ablationlab import io

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(message)s")
io.write_json(snakemake.output[0], json.loads(snakemake.params.content))
logging.info("wrote %s", snakemake.output[0])
