"""StopFilter: streamed text is cut at the first stop string, holding back only what must wait."""

from __future__ import annotations

from bot.backends.stops import StopFilter


def run(stops: tuple[str, ...], chunks: list[str]) -> tuple[list[str], bool]:
    f = StopFilter(stops)
    out = [f.feed(c) for c in chunks]
    out.append(f.flush())
    return out, f.stopped


def test_no_stops_passes_everything_through_immediately() -> None:
    assert run((), ["Hello", " wor", "ld"]) == (["Hello", " wor", "ld", ""], False)


def test_text_that_cannot_start_a_stop_is_emitted_at_once() -> None:
    assert run(("\nUser:",), ["Hello", " world"]) == (["Hello", " world", ""], False)


def test_stop_inside_one_chunk() -> None:
    assert run(("\nUser:",), ["Fine.\nUser: next"]) == (["Fine.", ""], True)


def test_stop_split_across_chunks_is_never_emitted() -> None:
    out, stopped = run(("\nUser:",), ["Fine.", "\nUs", "er", ": and more", " ignored"])
    assert out == ["Fine.", "", "", "", "", ""]
    assert stopped


def test_partial_prefix_that_is_not_a_stop_is_released() -> None:
    out, stopped = run(("\nUser:",), ["a\nUs", "ually fine"])
    assert out == ["a", "\nUsually fine", ""]
    assert not stopped


def test_held_tail_is_flushed_at_the_end() -> None:
    out, stopped = run(("\nUser:",), ["done\nUse"])
    assert out == ["done", "\nUse"]
    assert not stopped


def test_earliest_of_several_stops_wins() -> None:
    out, stopped = run(("###", "\n\n"), ["one\n", "\ntwo ###"])
    assert "".join(out) == "one"
    assert stopped


def test_overlapping_prefixes_hold_only_what_could_still_match() -> None:
    # "ab" could start "abc"; "b" alone could start "bd": the filter keeps the longest candidate.
    f = StopFilter(("abc", "bd"))
    assert f.feed("xab") == "x"
    assert f.feed("d") == "a"
    assert f.stopped
    assert f.flush() == ""


def test_chunks_after_a_stop_are_ignored_and_empty_stops_skipped() -> None:
    f = StopFilter(("", "END"))
    assert f.feed("abcEN") == "abc"
    assert f.feed("Dxyz") == ""
    assert f.feed("more") == ""
    assert f.stopped


def test_stream_concatenation_equals_text_cut_at_stop() -> None:
    text = "The answer is 42.\nUser: what else?"
    for size in range(1, 8):
        chunks = [text[i : i + size] for i in range(0, len(text), size)]
        out, stopped = run(("\nUser:",), chunks)
        assert "".join(out) == "The answer is 42."
        assert stopped
