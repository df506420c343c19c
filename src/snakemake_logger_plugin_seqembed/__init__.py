"""seqembed's Snakemake logger plugin: the live per-device view, and Snakemake's own messages
filtered to what a seqembed user needs at the configured verbosity.

Switched on by the workflow profile (`logger: [seqembed]`); found by Snakemake because the
package sits next to `seqembed` on the path (`pip install -e .`). The drawing is in
seqembed.report.display, the content in seqembed.report.view; this module only adapts
Snakemake's log records to them.
"""

import logging
from dataclasses import dataclass, field

from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.common import LogEvent
from snakemake_interface_logger_plugins.settings import LogHandlerSettingsBase

from seqembed.bundles import PREFIX
from seqembed.report import view
from seqembed.report.display import RunDisplay
from seqembed.shards import shard_job_name

# the view shows what these said, once per device instead of once per job
REPLACED_BY_VIEW = {
    LogEvent.JOB_INFO,
    LogEvent.JOB_STARTED,
    LogEvent.JOB_FINISHED,
    LogEvent.PROGRESS,
    LogEvent.SHELLCMD,
    LogEvent.WORKFLOW_STARTED,  # provenance: kept in Snakemake's log file and with verbose
}
# said once per scheduling round, per retry or per submitted job; the view and the jobs' own
# lines say more
ROUTINE = (
    "Select jobs to execute",
    "Execute ",
    "Trying to restart job",
    "Assuming unrestricted shared filesystem usage",
    "Using shell:",
    "Rules claiming more threads",
    "Conda environments: ignored",
)
# the SLURM executor plugin's words for every job it submits (some as warnings)
PER_SLURM_JOB = (
    "No SLURM account given",
    "No account was given",
    "Unable to guess SLURM account",
)


def _per_slurm_job(message: str) -> bool:
    return message.startswith(PER_SLURM_JOB) or (
        message.startswith("Job ") and " has been submitted with SLURM jobid " in message
    )


@dataclass
class LogHandlerSettings(LogHandlerSettingsBase):
    interval: float = field(
        default=30.0,
        metadata={
            "help": "Seconds between two status blocks when the output is not a terminal "
            "(a log file, CI, a SLURM batch script).",
        },
    )


class LogHandler(LogHandlerBase):
    def __post_init__(self) -> None:
        interval = self.settings.interval if self.settings else LogHandlerSettings.interval
        self.display = RunDisplay(interval=interval)
        self.embed_jobs: dict[int, str] = {}  # Snakemake job id -> input file name
        # Snakemake's own filter (--quiet, --printshellcmds), applied after the view has seen
        # every event: --quiet must not hide the events it follows
        from snakemake.logging import DefaultFilter

        settings = self.common_settings
        self.snakemake_filter = DefaultFilter(
            settings.quiet,
            settings.debug_dag,
            settings.verbose,
            settings.dryrun,
            settings.printshellcmds,
        )
        view.listen(self.display)

    @property
    def writes_to_stream(self) -> bool:
        return True

    @property
    def writes_to_file(self) -> bool:
        return False

    @property
    def has_filter(self) -> bool:
        return True

    @property
    def has_formatter(self) -> bool:
        return False  # Snakemake's own formatter makes the text

    @property
    def needs_rulegraph(self) -> bool:
        return False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event = getattr(record, "event", None)
            self._follow(record, event)
            if self.snakemake_filter.filter(record) and self._shown(record, event):
                self.display.write(self.format(record))
        except Exception:  # noqa: BLE001 - a display problem must never stop the run
            self.handleError(record)

    def _follow(self, record: logging.LogRecord, event) -> None:
        if event == LogEvent.RUN_INFO:
            stats = getattr(record, "stats", None) or {}
            self.display.scheduled = {rule: count for rule, count in stats.items() if _embeds(rule)}
        elif event == LogEvent.JOB_INFO:
            if record.rule_name.startswith(PREFIX):
                self.embed_jobs[record.jobid] = record.rule_name  # its files, in the view
            elif record.rule_name in ("embed", "embed_shard"):
                wildcards = dict(record.wildcards)
                name, shard = wildcards.get("name"), wildcards.get("shard")
                self.embed_jobs[record.jobid] = shard_job_name(name, shard) if shard else name
            elif record.rule_name == "summary":
                # every embed job is over; the summary table comes next, below the view
                self.display.detach()
        elif event == LogEvent.JOB_ERROR and record.jobid in self.embed_jobs:
            self.display.job_ended(self.embed_jobs[record.jobid])

    def _shown(self, record: logging.LogRecord, event) -> bool:
        verbosity = self.display.verbosity
        if self.common_settings.dryrun or verbosity == "verbose":
            return True  # a dry run lists the jobs; verbose shows all Snakemake says
        local = self.display.run is None or self.display.run.local
        own_line = _embeds(getattr(record, "rule_name", ""))
        if event == LogEvent.JOB_ERROR and own_line and local:
            # the job said what went wrong in one line of its own, or the view does for it
            return False
        if record.levelno < logging.ERROR and _per_slurm_job(str(record.msg)):
            return False
        if record.levelno >= logging.WARNING:
            return True
        if verbosity == "quiet" or event in REPLACED_BY_VIEW:
            return False
        return not (event is None and str(record.msg).startswith(ROUTINE))

    def close(self) -> None:
        self.display.close()
        super().close()


def _embeds(rule: str) -> bool:
    """A rule whose jobs compute embeddings: a file, a shard or a bundle of files."""
    return rule in ("embed", "embed_shard") or rule.startswith(PREFIX)
