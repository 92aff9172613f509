"""Runs: plan many targets into batches, dream them here or on Ray, store their records, enrich them.

`dream_targets(loaded, specs, config, out_dir=...)` is the library's whole run, `execute(prepare(loaded, specs,
config, RunOptions(...)))`: the run's settings are one `RunOptions` (`options`), `prepare` checks everything
once, up front, and takes the output folder, `execute` dreams. The targets are cut into batches (`plan`), each
batch dreamed packed (`batch`), written atomically and resumably (`store`), locally (`local`) or over Ray actors
(`on_ray`). `enrich` then adds dataset maxima and judges' verdicts;
`describe` gives prompt records their output-side description.

Example:
    >>> from dreamy.models import load
    >>> from dreamy.language import GCGConfig
    >>> records = dream_targets(load("tiny:lm"), ["logits:3"], GCGConfig(n_tokens=3, iters=1, children=4), progress=False)
    >>> records[0]["kind"], records[0]["method"]
    ('prompt', 'gcg')
"""

from dreamy.runs.batch import BatchOutput, dream_batch, error_record
from dreamy.runs.enrich import attach_judges, attach_maxima, judge_records
from dreamy.runs.local import RunRecords, claim, dream_targets, execute, prepare
from dreamy.runs.options import MaximaScan, RunOptions
from dreamy.runs.plan import KINDS, Claim, PreparedRun, batch_config, example_input, plan_batches, unusable_targets
from dreamy.runs.store import OutDirError, ResultsStore, prepare_out_dir, run_info, run_info_of, run_lock

__all__ = ["BatchOutput", "Claim", "KINDS", "MaximaScan", "OutDirError", "PreparedRun", "ResultsStore", "RunOptions",
           "RunRecords", "attach_judges", "attach_maxima", "batch_config", "claim", "dream_batch", "dream_targets",
           "error_record", "example_input", "execute", "judge_records", "plan_batches", "prepare", "prepare_out_dir",
           "run_info", "run_info_of", "run_lock", "unusable_targets"]
