import sys

import pytest

from tools.bundle_command import bundle_command, config_file_arg, override_args, torchrun


def test_several_config_files_become_the_list_monai_bundle_merges():
    assert config_file_arg("configs/train.json") == "configs/train.json"
    assert config_file_arg(["a.json"]) == "a.json"
    assert config_file_arg(["a.json", "b.json"]) == "['a.json','b.json']"
    with pytest.raises(ValueError, match="at least one"):
        config_file_arg([])


def test_overrides_are_written_as_the_cli_parses_them():
    assert override_args({"epochs": 2, "patch_size": [32, 32, 16], "amp": False, "dataset_dir": "d"}) == [
        "--epochs", "2", "--patch_size", "[32,32,16]", "--amp", "false", "--dataset_dir", "d",
    ]  # fmt: skip
    assert override_args(["--fold", "1"]) == ["--fold", "1"]


def test_run_and_export_commands():
    run = bundle_command(["t.json", "e.json"], bundle_root=".", meta_file="m.json", overrides={"seed": 3})
    assert run == [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "['t.json','e.json']",
        "--bundle_root", ".", "--meta_file", "m.json", "--seed", "3",
    ]  # fmt: skip
    export = bundle_command("i.json", workflow="ckpt_export", positional=["network_def"], python="py")
    assert export == ["py", "-m", "monai.bundle", "ckpt_export", "network_def", "--config_file", "i.json"]
    verify = bundle_command(None, workflow="verify_metadata", meta_file="m.json", python="py")
    assert verify == ["py", "-m", "monai.bundle", "verify_metadata", "--meta_file", "m.json"]


def test_torchrun_launcher_replaces_the_interpreter():
    command = bundle_command("t.json", launcher=torchrun(2, python="py"))
    assert command[:6] == ["py", "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    assert command[6:10] == ["-m", "monai.bundle", "run", "--config_file"]
