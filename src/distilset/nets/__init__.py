"""Networks, built by name: ``create_net("convnet", (1, 28, 28), 10, width=32)``."""

from distilset.nets import alexcifarnet, convnet, lenet, mlp, resnet, text  # noqa: F401  (register the nets)
from distilset.nets.init import INIT_SCHEMES, init_weights
from distilset.nets.registry import NETS, create_net, list_nets, register_net

__all__ = ["INIT_SCHEMES", "NETS", "create_net", "init_weights", "list_nets", "register_net"]
