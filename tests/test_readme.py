"""README.md's commands are run as written: each ```bash block says who runs it (tests/readme.py).

Here, without running anything slow: every block is tagged; what `.ci/run` runs is in `.ci/run`; the
blocks the DAG tests run are found by the same selection that test uses; a block that is not run says
why, and the README says so in its text. The DAG test itself is in tests/test_pipeline_edits.py.
"""

from __future__ import annotations

from tests.readme import ROOT, readme_blocks, shell_blocks, without_comment

CI = ("run by", ".ci/run")
DAG = ("run by", "make test-dag")


def test_every_shell_block_says_who_runs_it():
    blocks = shell_blocks()
    assert len(blocks) >= 3
    untagged = [b.line_no for b in blocks if b.tag is None]
    assert untagged == [], f"README.md: the ```bash blocks at lines {untagged} have no run-by / not-run tag"
    assert {b.tag for b in blocks if b.tag[0] == "run by"} <= {CI, DAG}


def test_ci_runs_the_blocks_tagged_for_it():
    ci_lines = {line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()}
    commands = [without_comment(c) for b in shell_blocks(CI) for c in b.commands]
    assert "make test" in commands and "make demo" in commands  # the README's two commands
    assert [c for c in commands if c not in ci_lines] == []


def test_the_dag_tests_run_the_blocks_tagged_for_them():
    commands = [without_comment(c) for b in shell_blocks(DAG) for c in b.commands]
    assert "dvc repro" in commands and any(c.startswith("python -m mmpipe.sweep") for c in commands)
    source = (ROOT / "tests/test_pipeline_edits.py").read_text()
    assert "shell_blocks(DAG)" in source and "def test_readme_blocks_run_as_written" in source


def test_a_block_that_is_not_run_says_why_in_the_text():
    readme = " ".join((ROOT / "README.md").read_text().split())  # line breaks as spaces
    for block in shell_blocks():
        if block.tag[0] == "not run":
            assert block.tag[1].strip(), block.line_no
            assert "not run by the tests" in readme


def test_the_parser_reads_tags_fences_and_comments():
    text = "x\n<!-- run by: .ci/run -->\n\n```bash\nmake a   # why\n# only a comment\n\nb --c\n```\n```\nlayout\n```\n"
    blocks = readme_blocks(text)
    assert [(b.language, b.tag, b.line_no) for b in blocks] == [("bash", CI, 4), ("", None, 10)]
    assert [without_comment(c) for c in blocks[0].commands] == ["make a", "b --c"]
    assert shell_blocks(DAG, text) == [] and len(shell_blocks(CI, text)) == 1
