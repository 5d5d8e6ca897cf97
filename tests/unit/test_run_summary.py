"""The run summary's lines and causes, from operation outputs shaped like pyinfra's."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from gpufleet.run_summary import (
    HostNotes,
    HostSummary,
    Outcome,
    document,
    failure_cause,
    render,
)


@dataclass
class Line:
    buffer_name: str
    line: str


@dataclass
class Output:
    combined_lines: list[Line]


@dataclass
class Meta:
    """What run_summary reads of pyinfra's OperationMeta."""

    succeeded: bool
    _combined_output: Output = field(default_factory=lambda: Output([]))

    def is_complete(self) -> bool:
        return True

    def did_succeed(self, _raise_if_not_complete: bool = True) -> bool:
        return self.succeeded


def meta(succeeded: bool, *lines: str) -> Meta:
    return Meta(succeeded, Output([Line("stdout", line) for line in lines]))


MIRROR = "http://10.213.0.1:8099/cuda/repos/ubuntu2004/x86_64/"
# apt-get update's words for a repository it cannot reach, and the install that fails later.
UPDATE_WARNING = (
    f"W: Failed to fetch {MIRROR}InRelease  Could not connect to 10.213.0.1:8099 (10.213.0.1). "
    "- connect (111: Connection refused)"
)
INSTALL_ERROR = "E: Unable to locate package cuda-toolkit-11-2"


def test_an_unreachable_mirror_is_the_cause_before_the_missing_package() -> None:
    operations = [
        ("NVIDIA's CUDA repository", meta(True, "Hit:1 http://10.213.0.1:8080/os focal InRelease",
                                          UPDATE_WARNING,
                                          "W: Some index files failed to download.")),
        ("CUDA toolkit 11.2.2 (pinned, held)", meta(False, "Reading package lists...",
                                                    INSTALL_ERROR)),
    ]  # fmt: skip
    notes = HostNotes("results", repository_urls=(MIRROR,))
    assert failure_cause(operations, notes) == (
        f"{UPDATE_WARNING}; CUDA toolkit 11.2.2 (pinned, held) failed: {INSTALL_ERROR}"
    )


def test_a_failure_without_apt_words_names_the_operation_and_its_last_line() -> None:
    operations = [
        ("docker runs with its daemon.json", meta(False, "restarting docker", "Job failed.")),
    ]
    assert failure_cause(operations, HostNotes("results")) == (
        "docker runs with its daemon.json failed: Job failed."
    )


def test_credentials_in_a_warning_are_redacted() -> None:
    secret = "http://user:s3cret@10.213.0.1:8099/cuda/repos/ubuntu2004/x86_64/"
    operations = [
        ("repository", meta(True, f"W: Failed to fetch {secret}InRelease  401  Unauthorized")),
        ("driver", meta(False, "E: Unable to locate package nvidia-headless-535")),
    ]
    cause = failure_cause(operations, HostNotes("results", repository_urls=(secret,)))
    assert "s3cret" not in cause and "***@10.213.0.1:8099" in cause


def test_lines_align_and_the_document_lists_every_host() -> None:
    summaries = [
        HostSummary("gpu-01", Outcome.OK, "", 0),
        HostSummary("gpu-002", Outcome.CHANGED, "", 3),
        HostSummary("gpu-3", Outcome.REFUSED, "cuda_version = '11.9' is not a CUDA release", 0),
        HostSummary("gpu-4", Outcome.REBOOT_REQUIRED, "nouveau is loaded", 5),
        HostSummary("gpu-5", Outcome.REFUSED, "invalid gpufleet data:\n  - cuda_verison ...", 0),
    ]
    assert render(summaries).splitlines() == [
        "gpu-01   OK",
        "gpu-002  CHANGED          3 operation(s) changed",
        "gpu-3    REFUSED          cuda_version = '11.9' is not a CUDA release",
        "gpu-4    REBOOT REQUIRED  nouveau is loaded",
        "gpu-5    REFUSED          invalid gpufleet data: - cuda_verison ...",
    ]
    written = document(summaries, datetime(2026, 12, 6, 21, 30, tzinfo=timezone.utc))
    assert written["finished_at"] == "2026-12-06T21:30:00Z"
    hosts = written["hosts"]
    assert isinstance(hosts, list)
    assert hosts[2] == {
        "host": "gpu-3",
        "outcome": "REFUSED",
        "cause": "cuda_version = '11.9' is not a CUDA release",
        "changed_operations": 0,
    }
