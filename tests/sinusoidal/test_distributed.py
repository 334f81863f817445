"""Distributed training with the gloo backend: two processes on this machine, started by the test. DDP steps with the
module inside a model give the parameters of single-process training on the full batch; sequence (context)
parallelism with `offset` gives, after all_gather, the single-process result."""

from __future__ import annotations

import datetime
import gc
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import pe_ext
from tests.sinusoidal.oracle import oracle_add, tolerance

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with the gloo backend is not available")

WORLD_SIZE = 2
COLLECTIVE_TIMEOUT_S = 20  # a rank waiting for a dead peer gives up after this
TEST_TIMEOUT_S = 60  # the whole spawn, start-up included; normally a few seconds
BATCH, SEQ_LEN, D_IN, D_MODEL, STEPS, LR = 8, 12, 6, 16, 5, 0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(worker, *args):
    """Runs worker(rank, port, *args) in WORLD_SIZE spawned processes; a failure in any rank fails the test with its
    traceback, and every process is gone when this returns."""
    context = mp.start_processes(worker, args=(free_port(), *args), nprocs=WORLD_SIZE, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + TEST_TIMEOUT_S
    try:
        while not context.join(timeout=1):  # raises with the rank's traceback if one failed
            if time.monotonic() > deadline:
                pytest.fail(f"distributed workers still running after {TEST_TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join()


def init(rank, port):
    torch.set_num_threads(1)  # two ranks share this machine's cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D_IN, D_MODEL), pe_ext.PositionalEncoding(D_MODEL, max_len=32, dropout=0.0,
                                                                             scale=2.0), nn.Linear(D_MODEL, 3))


def make_data():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, SEQ_LEN, D_IN, generator=generator), torch.randn(BATCH, SEQ_LEN, 3, generator=generator)


def train(model, x, y):
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for _ in range(STEPS):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def ddp_worker(rank, port, out_dir):
    init(rank, port)
    try:
        model = make_model()
        x, y = make_data()
        shard = slice(rank * BATCH // WORLD_SIZE, (rank + 1) * BATCH // WORLD_SIZE)
        # Equal shards: DDP's average of the shard losses' gradients is the full-batch loss's gradient.
        ddp = DistributedDataParallel(model)
        train(ddp, x[shard], y[shard])
        torch.save(model.state_dict(), f"{out_dir}/ddp_rank{rank}.pt")
        # Free DDP now: its reducer holds the process group and the last allreduce in a reference cycle, and if a
        # gloo thread drops that allreduce while Python finalizes, the process aborts ("terminate called without
        # an active exception"; a PyTorch shutdown race, 1 run in 4 here).
        del ddp
        gc.collect()
    finally:
        dist.destroy_process_group()


def test_ddp_training_matches_single_process_training(tmp_path):
    run_workers(ddp_worker, str(tmp_path))
    model = make_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, *make_data())
    expected = model.state_dict()
    assert not torch.equal(expected["0.weight"], initial["0.weight"])  # the gradient reached the layer before pe
    for rank in range(WORLD_SIZE):
        trained = torch.load(tmp_path / f"ddp_rank{rank}.pt")
        assert trained.keys() == expected.keys()  # the pe buffer is in the state_dict, unchanged
        for name in expected:
            torch.testing.assert_close(trained[name], expected[name], msg=f"rank {rank}, {name}")


SP_CONFIGS = [(buffer, batch_first) for buffer in ("table", "none") for batch_first in (True, False)]


def make_sequence_input(batch_first):
    x = torch.randn(3, 4 * WORLD_SIZE * 5, D_MODEL, generator=torch.Generator().manual_seed(2))
    return x if batch_first else x.transpose(0, 1).contiguous()


def sequence_parallel_worker(rank, port, out_dir):
    init(rank, port)
    try:
        for buffer, batch_first in SP_CONFIGS:
            module = pe_ext.PositionalEncoding(D_MODEL, max_len=64, buffer=buffer, batch_first=batch_first, scale=2.0)
            x = make_sequence_input(batch_first)
            seq_dim = 1 if batch_first else 0
            chunk = x.shape[seq_dim] // WORLD_SIZE
            # Each rank holds positions rank * chunk ... and encodes them at their global positions.
            local = module(x.narrow(seq_dim, rank * chunk, chunk).contiguous(), offset=rank * chunk)
            gathered = [torch.empty_like(local) for _ in range(WORLD_SIZE)]
            dist.all_gather(gathered, local)
            torch.save(torch.cat(gathered, dim=seq_dim), f"{out_dir}/sp_{buffer}_{batch_first}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sequence_parallel_with_offset_matches_single_process(tmp_path):
    run_workers(sequence_parallel_worker, str(tmp_path))
    for buffer, batch_first in SP_CONFIGS:
        module = pe_ext.PositionalEncoding(D_MODEL, max_len=64, buffer=buffer, batch_first=batch_first, scale=2.0)
        x = make_sequence_input(batch_first)
        expected = module(x)
        atol, rtol = tolerance(torch.float32, x.shape[1 if batch_first else 0], 8.0)
        torch.testing.assert_close(expected.double(), oracle_add(x, scale=2.0, seq_dim=1 if batch_first else 0),
                                   atol=atol, rtol=rtol)
        for rank in range(WORLD_SIZE):
            gathered = torch.load(tmp_path / f"sp_{buffer}_{batch_first}_rank{rank}.pt")
            # The same positions, computed the same way: bit-identical to the unsplit sequence.
            torch.testing.assert_close(gathered, expected, atol=0, rtol=0, msg=f"{buffer}, {batch_first}, {rank}")
