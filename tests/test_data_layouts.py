"""Label files and folder layouts users bring, and what happens when they are wrong."""

import os
import shutil

import cv2
import numpy as np
import pytest

from captcha.cli import main
from captcha.data import DataError, load_splits, scan_folder
from captcha.inference import evaluate_folder
from captcha.recognition_data import prepare_data
from captcha.train import TrainConfig, fit


def _write(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (50, 130, 3), dtype=np.uint8))


def _numbered_copy(tiny_data, out, with_top_csv=True):
    """The tiny set with its images renamed 0000.png... and one labels.csv at the top."""
    rows = ["filename,label"]
    for split in ("train", "val", "test"):
        for i, sample in enumerate(scan_folder(tiny_data / split)):
            name = f"{split}/{i:04d}.png"
            (out / split).mkdir(parents=True, exist_ok=True)
            shutil.copy(sample.path, out / name)
            rows.append(f"{name},{sample.label}")
    if with_top_csv:
        (out / "labels.csv").write_text("\n".join(rows) + "\n")
    return rows[1:]


def test_one_labels_csv_at_the_top_labels_the_split_folders(tiny_data, tmp_path):
    rows = _numbered_copy(tiny_data, tmp_path)
    splits = load_splits(tmp_path)
    assert {s: len(v) for s, v in splits.items()} == {"train": 120, "val": 40, "test": 40}
    first = splits["train"][0]
    assert first.path == tmp_path / "train" / "0000.png" and f"train/0000.png,{first.label}" in rows
    (tmp_path / "labels.csv").write_text("\n".join(rows + ["elsewhere/0000.png,2345"]) + "\n")
    with pytest.raises(DataError, match="outside train/, val/ and test/"):
        load_splits(tmp_path)
    # and the file names are not silently taken for labels
    report = {"alphabet": prepare_data(TrainConfig(data=str(tmp_path), cache_dir=str(tmp_path / "c"), skip_bad=True), tmp_path).alphabet.symbols}
    assert not set(report["alphabet"]) <= set("0123456789")


def test_top_and_split_label_files_together_are_refused(tiny_data, tmp_path):
    _numbered_copy(tiny_data, tmp_path)
    (tmp_path / "train" / "labels.csv").write_text("filename,label\n0000.png,2345\n")
    with pytest.raises(DataError, match="keep one of the two"):
        load_splits(tmp_path)


def test_spreadsheet_labels_csv_with_byte_order_mark_and_crlf_is_read(tmp_path):
    _write(tmp_path / "img1.png")
    _write(tmp_path / "img2.png", 1)
    (tmp_path / "labels.csv").write_bytes("\ufefffilename,label\r\nimg1.png,AAAA\r\nimg2.png,BBBB\r\n".encode("utf-8"))
    assert {s.path.name: s.label for s in scan_folder(tmp_path)} == {"img1.png": "AAAA", "img2.png": "BBBB"}


def test_a_file_listed_twice_with_two_labels_is_reported_and_skippable(tmp_path):
    for i in range(12):
        _write(tmp_path / f"img{i}.png", i)
    rows = [f"img{i}.png,{'AB' if i % 2 else 'BA'}" for i in range(12)] + ["img0.png,AB", "img3.png,AB"]  # one conflict, one repeat
    (tmp_path / "labels.csv").write_text("filename,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"img0.png: listed twice in labels.csv with different labels \('BA' and 'AB'\)") as info:
        scan_folder(tmp_path)
    assert "img3.png" not in str(info.value)  # the same label twice is no conflict
    problems: list = []
    samples = scan_folder(tmp_path, problems)
    assert len(samples) == 11 and "img0.png" not in {s.path.name for s in samples} and len(problems) == 1


def test_a_listed_file_that_is_missing_is_left_out_with_skip_bad(tmp_path):
    for i in range(20):
        _write(tmp_path / f"{'ab'[i % 2]}{'ba'[i % 2]}_{i}.png", i)
    rows = [f"{p.name},{p.name[:2]}" for p in sorted(tmp_path.glob("*.png"))] + ["ghost.png,ab"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    config = TrainConfig(data=str(tmp_path), cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match="ghost.png: listed in labels.csv but missing") as info:
        prepare_data(config, tmp_path)
    assert "--skip-bad" in str(info.value)
    config.skip_bad = True
    prepared = prepare_data(config, tmp_path)
    assert sum(len(d) for d in prepared.splits.values()) == 20


def test_skip_bad_never_trains_on_nothing_and_bad_files_add_no_symbol(tmp_path):
    for i in range(5):
        (tmp_path / "train" / f"234{i}_x.png").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "train" / f"234{i}_x.png").write_text("not an image")
        _write(tmp_path / "val" / f"{'ab'[i % 2]}{'ba'[i % 2]}ab_{i}.png", i)
    config = TrainConfig(data=str(tmp_path), cache_dir=str(tmp_path / "c"), skip_bad=True)
    with pytest.raises(DataError, match="no readable training images") as info:
        prepare_data(config, tmp_path)
    assert "--skip-bad to leave" not in str(info.value)
    for i in range(10):
        _write(tmp_path / "train" / f"{'ab'[i % 2]}{'ba'[i % 2]}ab_{i}.png", 10 + i)
    (tmp_path / "train" / "zzzz_bad.png").write_text("not an image either")
    prepared = prepare_data(config, tmp_path)
    assert prepared.alphabet.symbols == "ab" and len(prepared.splits["train"]) == 10  # z came from an unreadable file only
    for p in (tmp_path / "val").glob("*.png"):
        p.write_text("broken")
    with pytest.raises(DataError, match="no usable val images left"):
        prepare_data(config, tmp_path)


def test_missing_train_folder_and_empty_folders_say_what_a_data_folder_holds(tmp_path):
    _write(tmp_path / "split" / "val" / "abcd_0.png")
    _write(tmp_path / "split" / "test" / "abcd_1.png")
    with pytest.raises(DataError, match="no train/ folder beside val/, test/") as info:
        prepare_data(TrainConfig(cache_dir=str(tmp_path / "c")), tmp_path / "split")
    assert "--skip-bad" not in str(info.value) and "labels.csv" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no labeled images found") as info:
        prepare_data(TrainConfig(cache_dir=str(tmp_path / "c")), tmp_path / "empty")
    assert "--skip-bad" not in str(info.value)


def test_evaluate_names_an_empty_folder(trained_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="nothing to evaluate"):
        evaluate_folder(trained_run, tmp_path / "empty")
    assert main(["evaluate", str(trained_run), "--data", str(tmp_path / "empty")]) == 2
    assert "no labeled images found" in capsys.readouterr().err


def test_evaluate_reads_a_top_level_labels_csv(trained_run, easy_data, tmp_path):
    _numbered_copy(easy_data, tmp_path)
    renamed = evaluate_folder(trained_run, tmp_path)
    assert renamed["samples"] == 100 and renamed["sequence_accuracy"] == evaluate_folder(trained_run, easy_data)["sequence_accuracy"]


def test_evaluate_reads_a_folder_holding_only_a_test_split(trained_run, easy_data, tmp_path):
    shutil.copytree(easy_data / "test", tmp_path / "only" / "test")
    assert evaluate_folder(trained_run, tmp_path / "only")["samples"] == 100


def test_evaluate_on_the_flat_folder_a_run_split_scores_its_held_out_part(easy_data, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for split in ("train", "val"):  # one folder without split subfolders: train splits it 80/10/10 with its seed
        for image in sorted((easy_data / split).glob("*.png"))[:150]:
            shutil.copy(image, flat / image.name)
    run = tmp_path / "run"
    result = fit(TrainConfig(data=str(flat), out=str(run), epochs=1, cache_dir=str(tmp_path / "cache"), tta=1), log=lambda s: None)
    total = len(list(flat.glob("*.png")))
    report = evaluate_folder(run, flat)
    assert report["samples"] == result.test["samples"] == round(total * 0.1)
    assert report["sequence_accuracy"] == pytest.approx(result.test["sequence_accuracy"])
    assert "test part of the run's seeded" in report["data"]
    assert evaluate_folder(run, flat, split="train")["samples"] == total - 2 * round(total * 0.1)
    other = tmp_path / "other"  # any other flat folder is read whole
    shutil.copytree(flat, other)
    assert evaluate_folder(run, other)["samples"] == total


def test_labels_files_in_utf16_are_read_and_other_encodings_named(tmp_path):
    for i, label in enumerate(("ab12", "cd34")):
        _write(tmp_path / "d" / f"{i}.png", i)
    text = "filename,label\n0.png,ab12\n1.png,cd34\n"
    (tmp_path / "d" / "labels.csv").write_bytes(text.encode("utf-16"))  # a spreadsheet's "Unicode text"
    assert [s.label for s in scan_folder(tmp_path / "d")] == ["ab12", "cd34"]
    (tmp_path / "d" / "labels.csv").write_bytes((text + "2.png,café\n").encode("cp1252"))
    with pytest.raises(DataError, match=r"labels.csv: not UTF-8 text .* save it as UTF-8"):
        scan_folder(tmp_path / "d")


def test_images_a_labels_csv_does_not_list_are_named_as_left_out(tmp_path, capsys):
    for i in range(5):
        _write(tmp_path / f"{i}.png", i)
    (tmp_path / "labels.csv").write_text("filename,label\n0.png,ab12\n1.png,cd34\n")
    assert len(scan_folder(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "3 image(s) in" in err and "not listed in its labels.csv are left out (2.png, 3.png, 4.png)" in err


def test_a_top_level_labels_csv_without_a_test_folder_is_read(tiny_data, tmp_path):
    rows = _numbered_copy(tiny_data, tmp_path)
    shutil.rmtree(tmp_path / "test")
    (tmp_path / "labels.csv").write_text("filename,label\n" + "\n".join(r for r in rows if not r.startswith("test/")) + "\n")
    splits = load_splits(tmp_path)
    assert len(splits["train"]) == 120 and len(splits["val"]) == 40 and splits["test"] == []


def _outside_setup(tmp_path):
    """A data folder `d` with one image, beside a folder `outside` holding one image."""
    _write(tmp_path / "d" / "ab12_0.png")
    _write(tmp_path / "outside" / "x.png", 1)
    return tmp_path / "d"


@pytest.mark.parametrize("entry", ["../outside/x.png", "{outside}/x.png", "../../../../../../../etc/hostname", "sub/../../outside/x.png", "link.png"])
def test_labels_csv_entries_outside_the_folder_are_refused_by_name(tmp_path, entry):
    data = _outside_setup(tmp_path)
    (data / "link.png").symlink_to(tmp_path / "outside" / "x.png")  # a link out of the folder counts as outside
    entry = entry.format(outside=tmp_path / "outside")
    (data / "labels.csv").write_text(f"filename,label\nab12_0.png,ab12\n{entry},zz99\n")
    with pytest.raises(DataError) as info:
        scan_folder(data)
    assert len(info.value.problems) == 1
    path, reason = info.value.problems[0]
    assert entry in path and reason == f"listed in labels.csv but resolves outside {data}: only files inside the data folder are read"
    problems: list = []
    samples = scan_folder(data, problems)  # with --skip-bad: left out, never read
    assert [s.path.name for s in samples] == ["ab12_0.png"] and len(problems) == 1


def test_an_outside_entry_reads_the_same_whether_or_not_the_file_exists(tmp_path):
    data = _outside_setup(tmp_path)
    reasons = []
    for entry in ("../outside/x.png", "../outside/none.png", "/etc/hostname", "/no/such/file"):
        (data / "labels.csv").write_text(f"{entry},zz99\n")
        problems: list = []
        scan_folder(data, problems)
        reasons.append(problems[0][1])
    assert len(set(reasons)) == 1 and "outside" in reasons[0]


def test_links_out_of_a_folder_without_labels_csv_and_split_folders_linked_elsewhere_are_refused(tmp_path):
    data = _outside_setup(tmp_path)
    (data / "zz99_1.png").symlink_to(tmp_path / "outside" / "x.png")
    (data / "zz99_2.png").symlink_to(tmp_path / "outside" / "gone.png")  # outside and dangling: still "outside"
    problems: list = []
    assert [s.path.name for s in scan_folder(data, problems)] == ["ab12_0.png"]
    assert sorted(problems) == [(str(data / n), f"resolves outside {data}: only files inside the data folder are read") for n in ("zz99_1.png", "zz99_2.png")]
    (tmp_path / "via").symlink_to(data)  # the data folder itself may be reached through a link
    assert [s.path.name for s in scan_folder(tmp_path / "via", [])] == ["ab12_0.png"]
    top = tmp_path / "top"
    _write(top / "val" / "ab12_0.png")
    (top / "train").symlink_to(tmp_path / "outside")  # a split folder that leads out of the data folder
    (top / "labels.csv").write_text("train/x.png,zz99\nval/ab12_0.png,ab12\n")
    with pytest.raises(DataError, match=f"{top / 'train'}: resolves outside {top}"):
        load_splits(top)
    (top / "labels.csv").unlink()
    with pytest.raises(DataError, match=f"{top / 'train'}: resolves outside {top}"):
        load_splits(top)


def test_labels_csv_outside_its_folder_or_not_a_file_is_refused(tmp_path):
    data = _outside_setup(tmp_path)
    (tmp_path / "outside" / "labels.csv").write_text("ab12_0.png,zz99\n")
    (data / "labels.csv").symlink_to(tmp_path / "outside" / "labels.csv")
    with pytest.raises(DataError, match=f"labels.csv: resolves outside {data}"):
        scan_folder(data)
    (data / "labels.csv").unlink()
    (data / "labels.csv").symlink_to(data / "gone.csv")  # a broken link is not taken for "no labels file"
    with pytest.raises(DataError, match="labels.csv: a broken symbolic link"):
        scan_folder(data)


def test_broken_links_link_loops_and_folders_named_like_images_are_reported(tmp_path, tiny_data):
    data = tmp_path / "d"
    shutil.copytree(tiny_data / "val", data)
    (data / "labels.csv").unlink()  # labelled by file name
    (data / "2345_dangling.png").symlink_to(data / "gone.png")
    (data / "2345_loop.png").symlink_to(data / "2345_loop.png")
    (data / "2345_folder.png").mkdir()
    os.mkfifo(data / "2345_pipe.png")  # reading it would block for ever
    expected = {"2345_dangling.png": "a broken symbolic link (its target is missing)", "2345_loop.png": "a symbolic link loop",
                "2345_folder.png": "a folder, not an image file", "2345_pipe.png": "not a regular file"}
    with pytest.raises(DataError) as info:
        scan_folder(data)
    assert sorted(info.value.problems) == sorted((str(data / n), r) for n, r in expected.items())
    config = TrainConfig(data=str(data), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError) as info:  # in the report before training, with --skip-bad as the way on
        prepare_data(config, data)
    assert all(f"{data / n}: {r}" in str(info.value) for n, r in expected.items()) and "--skip-bad" in str(info.value)
    config.skip_bad = True
    assert len(prepare_data(config, data).splits["train"]) > 0
    rows = "".join(f"{n},2345\n" for n in expected)  # listed in labels.csv: the same reasons
    (data / "labels.csv").write_text(rows + "".join(f"{p.name},{p.name[:4]}\n" for p in data.glob("[0-9]*_0*.png")))
    with pytest.raises(DataError) as info:
        scan_folder(data)
    assert sorted(info.value.problems) == sorted((str(data / n), f"listed in labels.csv but {r}") for n, r in expected.items())


def test_a_quoted_file_name_holding_a_line_break_or_comma_is_read_whole(tmp_path, capsys):
    _write(tmp_path / "new\nline.png")
    _write(tmp_path / "newline.png", 1)
    _write(tmp_path / "a,b.png", 2)
    (tmp_path / "labels.csv").write_text('filename,label\n"new\nline.png",ab12\n"a,b.png",cd34\nnewline.png,ef56\n')
    assert {s.path.name: s.label for s in scan_folder(tmp_path)} == {"new\nline.png": "ab12", "a,b.png": "cd34", "newline.png": "ef56"}
    assert "left out" not in capsys.readouterr().err
    (tmp_path / "labels.csv").write_text('filename,label\nnewline.png,ef56\n"unterminated.png,ab12\n')
    with pytest.raises(DataError) as info:  # a quote left open swallows the rest: the row is named, not mangled
        scan_folder(tmp_path)
    assert "labels.csv" in str(info.value)


def test_two_spellings_of_one_file_with_two_labels_are_a_conflict(tmp_path):
    _write(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("a.png,ab12\n./a.png,cd34\n")
    with pytest.raises(DataError, match=r"a.png: listed twice in labels.csv with different labels \('ab12' and 'cd34'\)"):
        scan_folder(tmp_path)
