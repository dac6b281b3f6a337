"""The whole-file local storage given to Ray Tune: a reader sees the old file or the new one, never part."""

import pickle

import pyarrow.fs

from rdt_core.sweep.storage import is_local, tune_filesystem


def test_a_file_being_written_leaves_the_old_one_in_place_until_it_is_closed(tmp_path):
    filesystem = tune_filesystem(str(tmp_path))
    target = tmp_path / "experiment_state.json"
    target.write_text('{"old": true}')
    stream = filesystem.open_output_stream(str(target))
    stream.write(b'{"new": ')
    assert target.read_text() == '{"old": true}'  # a kill now would leave this
    stream.write(b"true}")
    stream.close()
    assert target.read_text() == '{"new": true}'
    assert [path.name for path in tmp_path.iterdir()] == ["experiment_state.json"]  # no scratch left


def test_copies_into_it_land_whole_and_it_travels_to_trials(tmp_path):
    source = tmp_path / "staging"
    source.mkdir()
    (source / "state.json").write_bytes(b"x" * 3_000_000)
    filesystem = tune_filesystem(str(tmp_path))
    pyarrow.fs.copy_files(str(source), str(tmp_path / "storage"), destination_filesystem=filesystem)
    assert (tmp_path / "storage" / "state.json").read_bytes() == b"x" * 3_000_000
    travelled = pickle.loads(pickle.dumps(filesystem))  # as Tune sends its storage context to a trial
    assert travelled.equals(filesystem) and is_local(travelled)
    assert tune_filesystem("s3://bucket/sweeps") is None  # object stores write whole already
