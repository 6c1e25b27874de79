"""What the user names -> films (``filmmine.media.inputs.resolve_inputs``): directories,
files, library manifests, duplicates, missing paths, scene-list sidecars, film ids.

No video is decoded here (the files are placeholders): which of them is a readable stereo
film is the probe's business. tests/test_extract.py covers ids shared by several films
(``path_tag`` suffixes) and inputs that fail in the probe, through whole runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from filmmine.media.inputs import FilmInput, InputIssue, path_tag, resolve_inputs, slug


def touch(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return str(path)


def test_a_directory_is_scanned_for_videos_and_the_rest_is_said(tmp_path):
    """Every video under the directory (sub-directories too, extensions in any case), in path
    order, its id from its path below the directory; hidden files and directories ignored;
    scene lists beside a video are its own (not inputs); any other file is skipped with its
    extension in one line."""
    lib = tmp_path / "lib"
    b = touch(lib / "b.mp4")
    big = touch(lib / "A.MKV")
    amelie = touch(lib / "sub" / "Amélie 3D.m2ts")
    for hidden in (".y.mp4", ".cache/z.mp4", "sub/.partial/w.mkv"):
        touch(lib / hidden)
    for other in ("notes.txt", "README", "orphan.scenes.csv"):
        touch(lib / other)
    b_list = touch(lib / "b-Scenes.csv")
    touch(lib / "b.edl")                         # a second list: PySceneDetect's CSV wins
    amelie_list = touch(lib / "sub" / "Amélie 3D.edl")

    films, issues = resolve_inputs([str(lib)], "half-sbs", projection="flat")
    assert films == [
        FilmInput("A", (big,), "half-sbs", "--layout", big, None, "flat"),
        FilmInput("b", (b,), "half-sbs", "--layout", b, b_list, "flat"),
        FilmInput("sub_Amelie_3D", (amelie,), "half-sbs", "--layout", amelie, amelie_list,
                  "flat"),
    ]
    assert issues == [
        InputIssue(str(lib / "README"), "skipped", "not a video file (no extension)"),
        InputIssue(str(lib / "notes.txt"), "skipped", "not a video file (.txt)"),
        InputIssue(str(lib / "orphan.scenes.csv"), "skipped", "not a video file (.csv)"),
    ]


@pytest.mark.parametrize("content", ["none", "notes only", "hidden only"])
def test_a_directory_without_videos_fails_in_one_line(tmp_path, content):
    lib = tmp_path / "lib"
    lib.mkdir()
    if content == "notes only":
        touch(lib / "notes.txt")
    elif content == "hidden only":
        touch(lib / ".trash" / "film.mp4")
    films, issues = resolve_inputs([str(lib)])
    assert films == []
    assert issues[-1] == InputIssue(str(lib), "failed", f"no videos found in {lib}")
    assert len(issues) == (2 if content == "notes only" else 1)


def test_relative_paths_become_absolute_and_missing_ones_fail(tmp_path, monkeypatch):
    """Films are recorded with absolute paths (resume compares them, whatever the working
    directory). A path that is not there fails in one line, a .json one too. A file named
    explicitly is a film whatever its extension, and so is a dangling link: the probe says
    what it is (or that it is missing)."""
    monkeypatch.chdir(tmp_path)
    touch(tmp_path / "films" / "clip.mp4")
    touch(tmp_path / "films" / "clip.scenes.csv")
    touch(tmp_path / "films" / "odd.bin")
    os.symlink(tmp_path / "films" / "gone.mp4", tmp_path / "films" / "link.mp4")
    films, issues = resolve_inputs(["films/clip.mp4", "films/odd.bin", "films/link.mp4",
                                    "nope.mp4", "nope.json"], "sbs")
    assert [(f.name, f.paths, f.source, f.scenes) for f in films] == [
        ("clip", (str(tmp_path / "films" / "clip.mp4"),), "films/clip.mp4",
         str(tmp_path / "films" / "clip.scenes.csv")),
        ("odd", (str(tmp_path / "films" / "odd.bin"),), "films/odd.bin", None),
        ("link", (str(tmp_path / "films" / "link.mp4"),), "films/link.mp4", None),
    ]
    assert issues == [InputIssue("nope.mp4", "failed", "no such file or directory"),
                      InputIssue("nope.json", "failed", "no such file or directory")]


def write_manifest(path: Path, films: list) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": "filmmine-library/1", "films": films}))
    return str(path)


def test_a_library_manifest_gives_names_layouts_views_and_scene_lists(tmp_path):
    """Paths relative to the manifest; the entry's name (as an id) or the file's stem; the
    entry's layout over --layout, --layout where the entry gives none; separate left/right
    views; an entry's scene list, else the one beside its file; its projection, else the
    command's. A file the manifest names that is not there is still a film: the probe fails
    it with its reason."""
    m = tmp_path / "m"
    packed, q = touch(m / "films" / "p.mp4"), touch(m / "films" / "q.mkv")
    left, right = touch(m / "rig" / "l.mov"), touch(m / "rig" / "r.mov")
    s, t = touch(m / "films" / "s.mp4"), touch(m / "films" / "t.mp4")
    t_list = touch(m / "films" / "t.scenes.csv")
    path = write_manifest(m / "lib.json", [
        {"name": "Packed Film", "path": "films/p.mp4", "layout": "tab"},
        {"path": "films/q.mkv"},
        {"name": "rig", "left": "rig/l.mov", "right": "rig/r.mov", "layout": "sbs"},
        {"name": "s", "path": "films/s.mp4", "scenes": "lists/s.edl", "projection": "flat"},
        {"name": "t", "path": "films/t.mp4", "layout": "auto"},
        {"name": "gone", "path": "films/gone.mp4"},
    ])
    gone = str(m / "films" / "gone.mp4")
    films, issues = resolve_inputs([path], "sbs", projection="equirect")
    assert issues == []
    lm = "library manifest"
    assert films == [
        FilmInput("Packed_Film", (packed,), "tab", lm, f"{path}#Packed Film", None, "equirect"),
        FilmInput("q", (q,), "sbs", "--layout", f"{path}#1", None, "equirect"),
        FilmInput("rig", (left, right), "separate", lm, f"{path}#rig", None, "equirect"),
        FilmInput("s", (s,), "sbs", "--layout", f"{path}#s", str(m / "lists" / "s.edl"), "flat"),
        FilmInput("t", (t,), "sbs", "--layout", f"{path}#t", t_list, "equirect"),
        FilmInput("gone", (gone,), "sbs", "--layout", f"{path}#gone", None, "equirect"),
    ]
    # without --layout, an entry's own layout or auto, from the manifest
    auto = resolve_inputs([path])[0]
    assert [(f.layout, f.layout_from) for f in auto] == [
        ("tab", lm), ("auto", lm), ("separate", lm), ("auto", lm), ("auto", lm), ("auto", lm)]


def test_a_directory_with_a_library_json_is_read_through_it(tmp_path):
    """``DIR/library.json``: the manifest's films, not a scan of the directory (its other
    files are not reported as skipped)."""
    lib = tmp_path / "lib"
    touch(lib / "stray.mp4")
    touch(lib / "notes.txt")
    one = touch(lib / "x" / "film.mp4")
    write_manifest(lib / "library.json", [{"name": "one", "path": "x/film.mp4"}])
    films, issues = resolve_inputs([str(lib)])
    assert [(f.name, f.paths) for f in films] == [("one", (one,))] and issues == []


def test_bad_manifest_entries_are_one_line_issues_and_the_rest_is_read(tmp_path):
    m = tmp_path / "lib.json"
    touch(tmp_path / "ok.mp4")
    path = write_manifest(m, [
        {"name": "half", "left": "l.mov"},
        {"name": "nothing", "layout": "sbs"},
        "just a string",
        {"name": "ok", "path": "ok.mp4"},
    ])
    films, issues = resolve_inputs([path])
    assert [f.name for f in films] == ["ok"]
    assert issues == [
        InputIssue(f"{path}#half", "failed", "separate views need both left and right"),
        InputIssue(f"{path}#nothing", "failed", "library entry names no path"),
        InputIssue(f"{path}#2", "failed", "library entry is not an object"),
    ]


@pytest.mark.parametrize("text", ["not json {", "", "[1, 2]", '"films"',
                                  '{"format": "filmmine-library/1"}'])
def test_an_unreadable_manifest_is_one_failed_input(tmp_path, text):
    m = tmp_path / "lib.json"
    m.write_text(text)
    films, issues = resolve_inputs([str(m), str(tmp_path / "none.json")])
    assert films == []
    assert [(i.source, i.status) for i in issues] == [
        (str(m), "failed"), (str(tmp_path / "none.json"), "failed")]
    assert issues[0].reason.startswith("unreadable library manifest: ")
    assert "\n" not in issues[0].reason


@pytest.mark.parametrize("films", [None, 5, [{"path": 5}], [{"name": 5, "path": "a.mp4"}],
                                   [{"name": "x", "left": "a.mp4", "right": None}],
                                   [{"name": "x", "path": "a.mp4", "scenes": 3}]])
def test_a_manifest_of_the_wrong_types_is_a_one_line_issue(tmp_path, films):
    m = tmp_path / "lib.json"
    m.write_text(json.dumps({"format": "filmmine-library/1", "films": films}))
    got, issues = resolve_inputs([str(m)])
    assert got == [] and len(issues) == 1 and issues[0].status == "failed"
    assert "\n" not in issues[0].reason


def test_a_film_named_twice_is_one_film(tmp_path, monkeypatch):
    """The same file named by a relative and an absolute path, through its directory, with
    ``..`` in it and by a manifest: one film, as first named."""
    monkeypatch.chdir(tmp_path)
    a = touch(tmp_path / "lib" / "a.mp4")
    man = write_manifest(tmp_path / "lib.json", [{"name": "other", "path": "lib/a.mp4"}])
    films, issues = resolve_inputs(["lib/a.mp4", a, str(tmp_path / "lib"), "lib/../lib/a.mp4",
                                    man])
    assert issues == []
    assert [(f.name, f.paths, f.source) for f in films] == [("a", (a,), "lib/a.mp4")]
    # the same two views given twice are one film; swapped, another
    two = write_manifest(tmp_path / "two.json", [
        {"name": "v", "left": "lib/a.mp4", "right": "lib/b.mp4"},
        {"name": "w", "left": "lib/a.mp4", "right": "lib/b.mp4"},
        {"name": "x", "left": "lib/b.mp4", "right": "lib/a.mp4"}])
    assert [f.name for f in resolve_inputs([two])[0]] == ["v", "x"]


def test_ids_of_the_corpus_are_kept_and_new_films_do_not_take_them(tmp_path):
    """``known`` (the corpus's films: their files -> id): a film mined before keeps its id
    whatever its name now; a new film whose name is a known id gets its files' tag. Of new
    films wanting one free name, the first by path gets it, whatever the command's order."""
    lib = tmp_path / "lib"
    b, c, d = touch(lib / "b.mp4"), touch(lib / "c.mp4"), touch(lib / "d.mp4")
    named_c = touch(tmp_path / "elsewhere" / "c.mp4")
    named_d = touch(tmp_path / "elsewhere" / "d.mp4")
    known = {(b,): "c"}    # b.mp4 was mined as "c" (a manifest's name then)
    films, _ = resolve_inputs([str(lib), named_c, named_d], known=known)
    assert {f.paths[0]: f.name for f in films} == {
        b: "c", c: f"c-{path_tag((c,))}", named_c: f"c-{path_tag((named_c,))}",
        named_d: "d", d: f"d-{path_tag((d,))}"}


def test_film_ids_are_slugs_and_tags_are_stable():
    """Ids go into shard names and sample keys: ASCII letters, digits, - and _ only (no dots);
    a tag is 8 hex digits of the films' files, the same in every version (a new film's id
    must not change between runs)."""
    assert slug("Amélie 3D (2001).x264") == "Amelie_3D_2001_x264"
    assert slug("...") == slug("日本語") == "film"
    assert slug("a-b_c") == "a-b_c"
    assert path_tag(("/films/a.mp4",)) == "11258b8d"   # sha256 of the path, as `sha256sum` gives it
    assert path_tag(("/films/l.mov", "/films/r.mov")) != path_tag(("/films/r.mov",
                                                                    "/films/l.mov"))
