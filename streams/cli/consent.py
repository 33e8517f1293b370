"""``fundflow consent import FILE | --from-rules FILE --by NAME``: a bank's opt-outs into Redis.

The file is a CSV with a header row naming ``customer_id,channel,status,recorded_at`` (any
order; ``note`` may follow and is ignored): ``channel`` push, sms or all; ``status`` opt_out,
opt_in or complaint (channel empty or all); ``recorded_at`` a date (the start of that day in
the bank's zone) or an RFC 3339 time with its offset (docs/contact.md). A file that cannot be
read as such (not UTF-8, no header, an unknown or missing column) is refused in one line
before anything is written; a bad row is counted, its line kept for the summary (the first
20), and the rest imported. Records merge by when the customer said them, so running the
same file again changes nothing (the summary says 0 changed). The import is audited as one
entry (who, when, the file's name and SHA-256, the counts), never one per row.

``--from-rules FILE`` moves a rules file's ``marketing.opt_out`` list (the way consent was
kept before this version) into Redis once: each id opted out of ``all``, dated by the file's
last change, so a second run changes nothing; then delete the list (the rules refuse it).

Exit 0 when every row was imported, 1 when some were refused (they are in the summary) or
the file was.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import Any

import yaml

from cases import people
from contact.model import ImportFileError, Parsed, Record, check_customer_id, parse_csv, read_text_lines
from contact.store import ContactStore
from streams.clients import connect
from streams.errors import ConfigError
from streams.settings import Settings
from streams.storage.keys import Keys


def rules_opt_outs(path: Path, parsed: Parsed) -> list[Record]:
    """The ``marketing.opt_out`` ids of a rules file, each an opt-out of ``all`` as of the file's mtime."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        at = int(path.stat().st_mtime)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    marketing = raw.get("marketing") if isinstance(raw, dict) else None
    listed = marketing.get("opt_out") if isinstance(marketing, dict) else None
    if not isinstance(listed, list):
        raise ConfigError(f"{path}: no marketing.opt_out list: nothing to move")
    records = []
    for place, item in enumerate(listed, start=1):
        parsed.rows += 1
        why = check_customer_id(item) if isinstance(item, str) else "not a string"
        if why is None:
            records.append(Record(item, "opt_out", "all", at))
        else:
            parsed.bad += 1
            parsed.problems.append(f"marketing.opt_out item {place}: {why}")
    return records


async def run_import(config: Settings, redis_url: str, file: Path, by: str, from_rules: bool) -> int:
    client = connect(redis_url, config.redis_cluster)
    try:
        person = (await people.registry(client, Keys(config.key_prefix).cases)).get(by)
        if person is None or person.get("role") not in ("analyst", "supervisor"):
            raise ConfigError(f"--by {by}: not an analyst or supervisor in the people registry (fundflow people add)")
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None
        parsed = Parsed()
        records: Iterator[Record]
        if from_rules:
            records = iter(rules_opt_outs(file, parsed))
        else:
            try:
                records = parse_csv(read_text_lines(data), config.zone, int(time.time()), parsed)
                first = next(records, None)  # a bad header is refused here, before anything is written
            except ImportFileError as exc:
                raise ConfigError(f"{file}: {exc}") from None
            records = chain([] if first is None else [first], records)
        store = ContactStore(client, Keys(config.key_prefix), config.contact_buckets, config.redis_cluster)
        number = await store.next_import()
        started = time.monotonic()
        changed, unchanged = await store.import_records(records, number)
        entry: dict[str, Any] = {
            "import": number,
            "at": int(time.time() * 1000),
            "by": by,
            "role": person["role"],
            "source": "rules" if from_rules else "csv",
            "file": file.name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "rows": parsed.rows,
            "imported": changed + unchanged,
            "changed": changed,
            "unchanged": unchanged,
            "bad": parsed.bad,
            "bad_lines": parsed.problems,
        }
        await store.log_import(entry)
    finally:
        await client.aclose()
    for problem in parsed.problems:
        print(f"  refused {problem}")
    if parsed.bad > len(parsed.problems):
        print(f"  ... and {parsed.bad - len(parsed.problems)} more refused rows")
    print(f"consent import {number} by {by}: {parsed.rows:,} rows, {changed + unchanged:,} imported "
          f"({changed:,} changed, {unchanged:,} already so), {parsed.bad:,} refused; "
          f"sha256 {entry['sha256'][:16]}…, {time.monotonic() - started:.1f}s")  # fmt: skip
    if from_rules:
        print(f"now delete marketing.opt_out from {file}: the rules refuse it from this version on")
    return 1 if parsed.bad else 0
