"""The Berka files shipped in ``streams/tools/berka_data`` are the PKDD'99 release, byte for byte."""

from __future__ import annotations

import hashlib
import lzma
import re

import pytest

from streams.tools.berka import SHIPPED_BERKA

# SHA-256 of the uncompressed files (as in berka_data/README.md) and their data rows.
SHIPPED = {
    "trans.asc": ("c83983941c5ac80b3292abe7374ff922ef30b8aaa1ff301a24e37e3ac6a6ca71", 49_102),
    "loan.asc": ("68535f609a254aa7a3f03dd8e27dcb822b532df12a0d6046f0666b8dc0b8ae8e", 682),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_file_matches_its_checksum(name: str) -> None:
    digest, rows = SHIPPED[name]
    data = lzma.decompress((SHIPPED_BERKA / f"{name}.xz").read_bytes())
    assert hashlib.sha256(data).hexdigest() == digest
    assert len(data.splitlines()) == rows + 1  # the header row


def test_only_what_the_converter_reads_is_shipped_and_small() -> None:
    files = sorted(p.name for p in SHIPPED_BERKA.iterdir() if p.name != "__pycache__")
    assert files == ["README.md", "loan.asc.xz", "trans.asc.xz"]
    assert sum(p.stat().st_size for p in SHIPPED_BERKA.iterdir()) < 2_000_000


def test_the_readme_states_provenance_licence_and_the_same_checksums() -> None:
    readme = (SHIPPED_BERKA / "README.md").read_text(encoding="utf-8")
    assert "PKDD'99" in readme and "anonymised" in readme and "CZK" in readme
    assert set(re.findall(r"`([0-9a-f]{64})`", readme)) == {digest for digest, _ in SHIPPED.values()}
