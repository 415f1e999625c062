"""study: the resolved experiment table and the report's study description.

One job per file (results/study/{name}.json), each with its content's key digests as params, so that a
job re-runs exactly when its file's content changes: editing a group's notes or the report
title re-writes report.json only, and nothing that reads experiments.json re-runs. The readers
take both files as plain inputs. (They took the table as ancient() with its digest as a
param once; but when the study job re-runs, Snakemake 9's DAG.update_needrun skips the own
checks of every job downstream of it and then drops those linked to it only by ancient
inputs, so their own reasons to run, such as new run files, were never looked at.)
Written where Snakemake runs (localrules), never queued on a cluster.
"""

from ablationlab import io as abl_io
from ablationlab import layout as abl_layout

# each file's content; the job's params are its key digests (abl_io.key_digests), one param each, so
# the file is rewritten only when it changes and the reason names the keys that changed
STUDY_FILES = {"experiments": STUDY.experiments, "report": STUDY.report}
STUDY_DIGESTS = {name: abl_io.key_digests(obj) for name, obj in STUDY_FILES.items()}


# the study job's params: {name: function}, the i-th key digest of its file ("" past its last)
STUDY_PARAMS = {
    f"key{i}": lambda wildcards, i=i: (STUDY_DIGESTS[wildcards.name][i:] or [""])[0]
    for i in range(max(map(len, STUDY_DIGESTS.values())))
}


localrules:
    study,


# written in Snakemake's process (no job start-up: profiles/default runs `run:` jobs in a thread); a write error
# is Snakemake's one error naming the file
rule study:
    input:
        library("study"),
    output:
        f"{abl_layout.STUDY_DIR}/{{name}}.json",
    log:
        abl_layout.log_path("study", "{name}"),
    wildcard_constraints:
        name="|".join(STUDY_FILES),
    params:
        **STUDY_PARAMS,
    run:
        abl_io.write_json(output[0], STUDY_FILES[wildcards.name])
