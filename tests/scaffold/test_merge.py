"""The three-way merge of `scaffold update` and its conflict markers, on hand-written file versions."""

from __future__ import annotations

from scaffold.merge import Conflict, conflict_markers, merge_file, merge_trees

BASE = b"import torch\n\n\ndef f(x):\n    return x\n\n\ndef g(x):\n    return x * 2\n"
LABEL = "regenerated (test)"


def test_edits_in_different_places_both_land():
    ours = BASE.replace(b"def f(x):\n", b"# mine\ndef f(x):\n")
    theirs = BASE.replace(b"x * 2", b"x * 3")
    assert merge_file(BASE, ours, theirs, LABEL) == (
        b"import torch\n\n\n# mine\ndef f(x):\n    return x\n\n\ndef g(x):\n    return x * 3\n"
    )


def test_one_side_unchanged_takes_the_other_side_whole():
    edited = BASE + b"# end\n"
    assert merge_file(BASE, BASE, edited, LABEL) == edited
    assert merge_file(BASE, edited, BASE, LABEL) == edited
    assert merge_file(BASE, edited, edited, LABEL) == edited


def test_the_same_line_changed_twice_keeps_both_between_markers():
    ours = BASE.replace(b"x * 2", b"x * 4")
    theirs = BASE.replace(b"x * 2", b"x * 3")
    merged = merge_file(BASE, ours, theirs, LABEL)
    assert merged == BASE.replace(
        b"    return x * 2\n",
        b"<<<<<<< yours (on disk)\n    return x * 4\n=======\n    return x * 3\n>>>>>>> regenerated (test)\n",
    )
    assert conflict_markers({"m.py": merged}) == (Conflict("m.py", 9), Conflict("m.py", 13))


def test_a_file_the_contributor_removed_and_the_generator_changed_is_a_conflict_not_a_loss():
    theirs = BASE.replace(b"x * 2", b"x * 3")
    merged = merge_trees({"m.py": BASE}, {}, {"m.py": theirs}, LABEL)
    assert merged.conflicts and b"return x * 3" in (merged.files["m.py"] or b"")
    assert merge_trees({"m.py": BASE}, {}, {"m.py": BASE}, LABEL).files == {"m.py": None}  # removal kept


def test_a_last_line_without_newline_does_not_swallow_a_marker():
    merged = merge_file(b"a\n", b"b", b"c\n", LABEL)
    assert merged == b"<<<<<<< yours (on disk)\nb\n=======\nc\n>>>>>>> regenerated (test)\n"


def test_markers_are_found_by_file_and_line_and_underlines_are_not_markers():
    files = {
        "a.py": b"x = 1\n<<<<<<< HEAD\ny = 2\n=======\ny = 3\n>>>>>>> other\n",
        "b.md": b"Title\n=======\n\n<<<<<<<\n",
        "c.py": b"s = '<<<<<<< not at the start'\n",
    }
    assert conflict_markers(files) == (Conflict("a.py", 2), Conflict("a.py", 6), Conflict("b.md", 4))
