"""The benchmark tooling that is not itself a benchmark: README table splicing."""

from tests.bench.update_readme import splice


def test_splice_replaces_only_marked_tables_with_results(tmp_path):
    (tmp_path / "predict.md").write_text("# Title dropped\n\n| a |\n|---|\n| 1 |\n")
    readme = ("intro\n<!-- bench:predict -->\nold table\n<!-- /bench:predict -->\nprose\n"
              "<!-- bench:missing -->\nkept\n<!-- /bench:missing -->\n")
    text, updated = splice(readme, tmp_path)
    assert updated == ["predict"]
    assert "old table" not in text and "| 1 |" in text and "Title dropped" not in text
    assert "kept" in text and text.startswith("intro\n") and "prose" in text
    assert splice(text, tmp_path)[0] == text  # idempotent
