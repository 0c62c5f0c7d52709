from testbed.content import make_content, make_torrent, sha256_file


def test_content_is_deterministic_from_the_seed(tmp_path):
    a = make_content(tmp_path / "a.bin", 3 * 2**20 + 5, seed=42)
    b = make_content(tmp_path / "b.bin", 3 * 2**20 + 5, seed=42)
    c = make_content(tmp_path / "c.bin", 3 * 2**20 + 5, seed=43)
    assert a == b != c
    assert sha256_file(tmp_path / "a.bin") == a
    assert (tmp_path / "a.bin").stat().st_size == 3 * 2**20 + 5


def test_torrent_is_private_and_reproducible(tmp_path):
    import torf
    (tmp_path / "x").mkdir()
    make_content(tmp_path / "x" / "f.bin", 2**20, seed=1)
    h1 = make_torrent(tmp_path / "x" / "f.bin", "http://198.18.0.1:6969/announce", 65536, tmp_path / "1.torrent")
    h2 = make_torrent(tmp_path / "x" / "f.bin", "http://198.18.0.1:6969/announce", 65536, tmp_path / "2.torrent")
    assert h1 == h2 and len(h1) == 40
    t = torf.Torrent.read(tmp_path / "1.torrent")
    assert t.private and t.piece_size == 65536 and t.trackers == [["http://198.18.0.1:6969/announce"]]


def test_missing_file_has_no_hash(tmp_path):
    assert sha256_file(tmp_path / "nope") is None
