"""A small model built from fastconv ops compiles with fullgraph=True and matches eager."""
import torch

import fastconv


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
        self.b1 = torch.nn.Parameter(torch.randn(8) * 0.1)
        self.w2 = torch.nn.Parameter(torch.randn(16, 8, 3, 3) * 0.2)
        self.fc = torch.nn.Linear(16 * 2 * 2, 5)

    def forward(self, x):
        x = fastconv.conv2d(x, self.w1, self.b1, padding=1, activation="relu", pool=2)
        x = fastconv.conv2d(x, self.w2, None, padding="same", activation="relu")
        x = fastconv.max_pool2d(fastconv.relu(x), 3, 2, 1)
        return self.fc(x.flatten(1))


def test_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = TinyNet()
    x = torch.randn(4, 3, 8, 8)
    eager = model(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)
