import torch


def assert_relative_close(ours, reference, relative: float, what: str = "") -> None:
    """Equal to `relative`: for a number, relative to it; for a vector, relative to its norm. (Two codes that sum
    or fuse in different orders differ in the last bits, and training amplifies those differences; a weight near
    zero can then differ by more than `relative` of itself while the vector agrees.)"""
    ours = torch.as_tensor(ours, dtype=torch.float64).detach()
    reference = torch.as_tensor(reference, dtype=torch.float64).detach()
    difference = float(torch.linalg.vector_norm(ours - reference))
    error = difference / float(torch.linalg.vector_norm(reference)) if difference else 0.0
    assert error <= relative, f"{what}: relative difference {error:.3g} > {relative}"
