"""The names the SDK spells must be the server's: read them from the Rust sources."""

from __future__ import annotations

import re

from conftest import REPO

from lockstep import errors, names


def rust_constants(path: str) -> dict[str, str]:
    text = (REPO / path).read_text()
    return dict(re.findall(r'pub const ([A-Z_]+): &str = "([^"]*)";', text))


def test_headers_and_metadata_keys_match_lockstep_proto_names() -> None:
    rust = rust_constants("crates/lockstep-proto/src/lib.rs")
    assert rust, "no constants found: did crates/lockstep-proto/src/lib.rs move its names?"
    for name, value in rust.items():
        assert getattr(names, name, None) == value, f"names.{name} should be {value!r}"


def test_transport_reasons_match_the_server() -> None:
    status = (REPO / "crates/lockstep-server/src/status.rs").read_text()
    for reason in (names.NOT_LEADER, names.OUTCOME_UNKNOWN, names.BUSY, names.BAD_REQUEST, *names.RESOURCE_REASONS):
        assert f'"{reason}"' in status, f"{reason} is not a reason of crates/lockstep-server/src/status.rs"


def test_refusal_codes_match_the_engine_and_each_has_an_exception() -> None:
    types = (REPO / "crates/lockstep-core/src/engine/types.rs").read_text()
    as_str = types[types.index("pub fn as_str") : types.index("pub fn parse")]
    assert tuple(re.findall(r'=> "([A-Z_]+)"', as_str)) == names.REFUSAL_CODES
    for code in names.REFUSAL_CODES:
        cls = errors.Refused.for_code(code)
        assert cls is not errors.Refused and cls.CODE == code
        assert issubclass(cls, errors.Refused)


def test_the_worker_cuts_error_texts_to_the_servers_bound() -> None:
    from lockstep.worker import ERROR_BYTES_MAX

    tasks = (REPO / "crates/lockstep-server/src/tasks.rs").read_text()
    match = re.search(r"pub const TASK_ERROR_BYTES_MAX: usize = ([0-9_]+);", tasks)
    assert match is not None and int(match.group(1).replace("_", "")) == ERROR_BYTES_MAX
