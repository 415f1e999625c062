"""Rule `study`: write the study files Snakemake passes as params (canonical JSON)."""

import json
import logging

from ablationlab import io

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(message)s")
for name in ("experiments", "report"):
    io.write_json(snakemake.output[name], json.loads(snakemake.params[name]))
    logging.info("wrote %s", snakemake.output[name])
