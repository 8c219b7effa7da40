import pytest
import torch

from anomaly.device import resolve_device, set_torch_threads


def test_cpu():
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_is_cpu_or_cuda():
    dev = resolve_device("auto")
    assert dev.type in ("cpu", "cuda")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_auto_without_cuda_is_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_without_cuda_raises():
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")


def test_cuda_without_cuda_raises_even_on_a_gpu_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_with_cuda():
    assert resolve_device("cuda").type == "cuda"


@pytest.mark.parametrize("name", ["gpu", "CPU", "mps", "", "cuda:0"])
def test_unknown_name_raises(name):
    with pytest.raises(ValueError):
        resolve_device(name)


@pytest.mark.parametrize("name", ["gpu", "CPU", "mps", ""])
def test_unknown_name_message(name, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # an unknown name is unknown on any machine
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device(name)


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_set_torch_threads_explicit(restore_threads):
    assert set_torch_threads(1) == 1
    assert torch.get_num_threads() == 1


def test_set_torch_threads_default_leaves_a_core(restore_threads, monkeypatch):
    monkeypatch.setattr("anomaly.model_files.os.cpu_count", lambda: 4)
    assert set_torch_threads(None) == 3
    monkeypatch.setattr("anomaly.model_files.os.cpu_count", lambda: 1)
    assert set_torch_threads(None) == 1
    monkeypatch.setattr("anomaly.model_files.os.cpu_count", lambda: None)
    assert set_torch_threads(None) == 1
