import pytest
import torch
from ignite.engine import Engine

from common.errors import CheckpointMismatchError
from common.handlers import ResumableCheckpoint, load_weights


def test_flat_and_nested_state_dicts_load(tmp_path):
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch.save(source.state_dict(), tmp_path / "flat.pt")
    torch.save({"model": source.state_dict()}, tmp_path / "nested.pt")
    for name in ("flat.pt", "nested.pt"):
        load_weights(target, tmp_path / name)
        assert torch.equal(target.weight, source.weight)


def test_checkpoint_of_another_architecture_is_explained(tmp_path):
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointMismatchError, match=r"model\.pt does not fit the network Linear: shape mismatches"):
        load_weights(torch.nn.Linear(4, 2), tmp_path / "model.pt")
    with pytest.raises(CheckpointMismatchError, match=r"missing tensors 2 \(0\.weight, 0\.bias\)"):
        load_weights(torch.nn.Sequential(torch.nn.Linear(3, 2)), tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError, match=r"absent\.pt: no such checkpoint"):
        load_weights(torch.nn.Linear(3, 2), tmp_path / "absent.pt")


def _training(path, max_epochs, resume=True):
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    seen_epochs = []

    def step(engine, batch):
        optimizer.zero_grad()
        loss = network(batch).pow(2).mean()
        loss.backward()
        optimizer.step()
        seen_epochs.append(engine.state.epoch)

    engine = Engine(step)
    ResumableCheckpoint(path, {"network": network, "optimizer": optimizer}, resume=resume).attach(engine)
    engine.run([torch.ones(1, 2)] * 3, max_epochs=max_epochs)
    return network, seen_epochs


def test_killed_run_resumes_from_the_last_epoch(tmp_path):
    path = tmp_path / "ckpt" / "checkpoint_last.pt"
    first, epochs = _training(path, max_epochs=2)
    assert epochs == [1, 1, 1, 2, 2, 2] and path.is_file()
    assert not list(path.parent.glob(".*.tmp"))
    resumed, epochs = _training(path, max_epochs=3)
    assert epochs == [3, 3, 3]  # only the missing epoch runs
    assert not torch.equal(resumed.weight, first.weight)
    _, epochs = _training(path, max_epochs=3)
    assert epochs == []  # already finished
    _, epochs = _training(path, max_epochs=1, resume=False)
    assert epochs == [1, 1, 1]


def test_resume_from_checkpoint_of_another_network_is_explained(tmp_path):
    path = tmp_path / "checkpoint_last.pt"
    torch.save({"network": torch.nn.Linear(5, 1).state_dict()}, path)
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint_last\.pt does not fit"):
        _training(path, max_epochs=1)
