"""shards at URLs: packed shards served by a local ``http.server`` (127.0.0.1) read through
the download cache bit for bit like the local shards, each downloaded once per machine,
resumed exactly, a 404 or cut download failing in one line (or skipped), a size-bounded
cache, ``pipe:`` commands, and ``recipe check`` opening nothing remote."""

from __future__ import annotations

import collections
import http.server
import threading
from pathlib import Path

import pytest
import torch

from denoisekit.cli import main
from denoisekit.engine.batches import BatchStream
from denoisekit.errors import DataError
from denoisekit.plugins.data._shard_cache import ShardCache, is_remote, local_name
from denoisekit.plugins.data.shards import build_shards
from tests.plugins.test_data_shards import SHARDS_TABLE, number, pack, shard_config, write_recipe

CPU = torch.device("cpu")
PATTERN = "shards/train-{000000..000009}.tar"


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """48 images in shards of 5 (10 shards, the last one of 3)."""
    root = tmp_path_factory.mktemp("served")
    pack(root, 48, 5)
    data = (root / "shards" / "train-000003.tar").read_bytes()
    (root / "shards" / "short.tar").write_bytes(data[: len(data) // 2 + 100])  # cut on the server
    return root


class Server:
    """``root`` served on 127.0.0.1; ``gets`` counts the requests per path; ``/cut/NAME``
    sends NAME's length but only half its bytes, then closes (a download cut short)."""

    def __init__(self, root: Path) -> None:
        self.gets: collections.Counter[str] = collections.Counter()
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kw) -> None:
                super().__init__(*args, directory=str(root), **kw)

            def do_GET(self) -> None:
                server.gets[self.path] += 1
                if self.path.startswith("/cut/"):
                    data = (root / self.path[len("/cut/") :]).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(packed, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    served = Server(packed)
    yield served
    served.close()


def config(shards: str, cache: Path, **options):
    return shard_config(shards=shards, cache_dir=str(cache), **options)


def test_locations_and_cache_names() -> None:
    assert is_remote("https://host/a.tar") and is_remote("s3://bucket/a.tar")
    assert is_remote("pipe:cat a.tar") and is_remote("gs://b/x.tar")
    assert not is_remote("data/a.tar") and not is_remote("/abs/a.tar")
    assert not is_remote("file:///abs/a.tar")
    a, b = local_name("https://h/x/train-000001.tar"), local_name("https://h/y/train-000001.tar")
    assert a != b and a.endswith("-train-000001.tar") and b.endswith("-train-000001.tar")
    assert local_name("pipe:aws s3 cp s3://b/x.tar -").endswith("-shard")


@pytest.mark.parametrize("shards", [PATTERN, "shards/shardindex.json"])
def test_a_url_pattern_or_index_reads_the_local_shards_bit_for_bit(
    packed, server, tmp_path, shards: str
) -> None:
    local = build_shards(shard_config(), root=packed, train=False)
    remote = build_shards(config(f"{server.url}/{shards}", tmp_path), root=packed, train=False)
    assert remote.paths[0] == f"{server.url}/shards/train-000000.tar"
    assert remote.counts == local.counts
    for i in range(48):
        (x, y), (a, b) = remote[i], local[i]
        assert torch.equal(x, a) and y == b
    assert remote.caption(7) == local.caption(7)
    assert all(server.gets[f"/shards/train-{k:06d}.tar"] == 1 for k in range(10))
    again = build_shards(config(f"{server.url}/{shards}", tmp_path), root=packed, train=False)
    assert torch.equal(again[30][0], local[30][0])  # from the cache: no second download
    assert all(server.gets[f"/shards/train-{k:06d}.tar"] == 1 for k in range(10))
    assert len(list(tmp_path.glob("*.tar"))) == 10 and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("order", ["random", "shards"])
def test_two_ranks_two_workers_read_url_shards_as_local_ones_and_resume(
    packed, server, tmp_path, order: str
) -> None:
    index = f"{server.url}/shards/shardindex.json"
    local = build_shards(shard_config(order=order), root=packed, train=True)
    remote = build_shards(config(index, tmp_path, order=order), root=packed)

    def streams(data, world: int, workers: int) -> list[BatchStream]:
        return [BatchStream(data, batch_size=8, seed=4, device=CPU, rank=r, world_size=world,
                            num_workers=workers) for r in range(world)]  # fmt: skip

    ranks, plain = streams(remote, 2, 2), streams(local, 2, 2)
    seen = []
    for _ in range(6):  # one epoch: 6 batches of 8
        for r, p in zip(ranks, plain, strict=True):
            (x, y), (a, b) = next(r), next(p)
            assert torch.equal(x, a) and torch.equal(y, b)
            seen += number(x)
    assert sorted(seen) == list(range(48))
    assert sum(server.gets.values()) == 11  # the index, then each shard once (4 workers)

    next(ranks[0]), next(ranks[1])
    state = ranks[0].state_dict()
    assert state == {"epoch": 1, "position": 1}
    after = [torch.cat([next(r)[0] for r in ranks]) for _ in range(3)]
    resumed = streams(remote, 1, 0)[0]  # one process goes on
    resumed.load_state_dict(state)
    for images in after:
        assert torch.equal(next(resumed)[0], images)


def test_a_404_fails_in_one_line_naming_the_url_or_is_skipped(packed, server, tmp_path) -> None:
    pattern = f"{server.url}/shards/train-{{000008..000010}}.tar"  # 000010 does not exist
    with pytest.raises(DataError) as info:
        build_shards(config(pattern, tmp_path), root=packed)
    message = str(info.value)
    assert "\n" not in message
    assert f"cannot read {server.url}/shards/train-000010.tar (download failed: exit status 22" in (
        message
    )
    assert "check the URL" in message and 'data.on_error = "skip"' in message
    data = build_shards(config(pattern, tmp_path, on_error="skip"), root=packed)
    assert data.counts == [5, 3, 0] and len(data) == 8


def test_a_cut_download_fails_in_one_line_and_leaves_nothing_cached(
    packed, server, tmp_path
) -> None:
    url = f"{server.url}/cut/shards/train-000001.tar"
    with pytest.raises(DataError, match=r"cut/shards/train-000001\.tar \(download failed: exit "
                       r"status 18: download cut short\)"):  # fmt: skip
        build_shards(config(url, tmp_path), root=packed)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []
    assert not list(tmp_path.glob(".*.tmp"))
    short = f"{server.url}/shards/{{train-000000,short}}.tar"  # the server's copy is cut
    with pytest.raises(DataError, match=r"short\.tar \(truncated tar"):
        build_shards(config(short, tmp_path), root=packed)
    skipped = build_shards(config(short, tmp_path, on_error="skip"), root=packed)
    assert skipped.counts == [5, 0]


def test_an_index_naming_a_missing_shard_follows_on_error(packed, server, tmp_path) -> None:
    text = (packed / "shards" / "shardindex.json").read_text()
    (packed / "shards" / "gone.json").write_text(text.replace("train-000002", "gone-000002"))
    index = f"{server.url}/shards/gone.json"
    data = build_shards(config(index, tmp_path), root=packed, train=False)  # nothing read yet
    assert torch.equal(data[9][0], build_shards(shard_config(), root=packed, train=False)[9][0])
    with pytest.raises(DataError, match=r"gone-000002\.tar \(download failed: exit status 22"):
        data[10]
    skipping = build_shards(config(index, tmp_path, on_error="skip"), root=packed, train=False)
    skipping[10]
    assert skipping.skipped == 1 and skipping.skipped_members[0].endswith("gone-000002.tar")


def test_a_size_bounded_cache_keeps_the_most_recently_used(packed, server, tmp_path) -> None:
    size = (packed / "shards" / "train-000000.tar").stat().st_size
    (tmp_path / "notes.txt").write_bytes(b"x" * 10 * size)  # not the cache's: never removed
    data = build_shards(config(f"{server.url}/{PATTERN}", tmp_path, cache_gb=3.2 * size / 1e9),
                        root=packed, train=False)  # fmt: skip
    for i in range(48):
        data[i]
    kept = sorted(p.name.split("-", 1)[1] for p in tmp_path.glob("*.tar"))
    assert kept == ["train-000007.tar", "train-000008.tar", "train-000009.tar"]
    assert sum(p.stat().st_size for p in tmp_path.glob("*.tar")) <= 3.2 * size
    assert (tmp_path / "notes.txt").stat().st_size == 10 * size


def test_pipe_commands_run_as_written(packed, tmp_path) -> None:
    folder = packed / "shards"
    data = build_shards(config(f"pipe:cat {folder}/train-{{000000..000009}}.tar", tmp_path),
                        root=packed, train=False)  # fmt: skip
    local = build_shards(shard_config(), root=packed, train=False)
    assert all(torch.equal(data[i][0], local[i][0]) for i in (0, 24, 47))
    with pytest.raises(DataError, match=r"pipe:false \(download failed: exit status 1\)"):
        build_shards(config("pipe:false", tmp_path), root=packed)


def test_the_cache_downloads_each_url_once_under_concurrent_fetches(server, tmp_path) -> None:
    cache = ShardCache(tmp_path)
    url = f"{server.url}/shards/train-000004.tar"
    threads = [threading.Thread(target=cache.fetch, args=(url,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert server.gets["/shards/train-000004.tar"] == 1 and cache.path(url).is_file()


def test_recipe_check_opens_nothing_remote(packed, server, capsys) -> None:
    table = SHARDS_TABLE.replace('"shards/shardindex.json"', f'"{server.url}/{PATTERN}"')
    recipe = write_recipe(packed, table, "remote-check")
    assert main(["recipe", "check", str(recipe)]) == 0
    assert sum(server.gets.values()) == 0


@pytest.mark.slow
def test_torchrun_ranks_resume_a_one_process_run_on_url_shards(packed, server, tmp_path):
    """The whole path: 2 ranks × 2 workers under torchrun, ``order = "shards"``, the shards
    at a URL through one cache, resuming a one-process run's checkpoint."""
    from tests.test_distributed import _assert_close, _state, torchrun

    index = f"{server.url}/shards/shardindex.json"
    table = SHARDS_TABLE.replace('"shards/shardindex.json"', f'"{index}"') + (
        f'\nhflip = 0.0\norder = "shards"\nspans = 2\nwindow = 2\ncache_dir = "{tmp_path / "c"}"'
    )
    recipe = write_recipe(packed, table, "dist-remote")
    extra = ["--set", "train.num_workers=2", "--set", "hooks.checkpoint.every=2"]
    single = tmp_path / "single"
    assert main(["train", str(recipe), "--out", str(single), *extra]) == 0
    two = tmp_path / "two"
    result = torchrun("train", str(recipe), "--out", str(two), *extra, "--resume",
                      str(single / "checkpoints" / "step-00000002.pt"), cwd=packed)  # fmt: skip
    assert result.returncode == 0, result.stderr
    one, resumed = (
        _state(single / "checkpoints" / "last.pt"),
        _state(two / "checkpoints" / "last.pt"),
    )
    assert one["step"] == resumed["step"] == 4 and one["data"] == resumed["data"]
    _assert_close(one["model"], resumed["model"])
    assert max(n for path, n in server.gets.items() if path.endswith(".tar")) == 1
