"""ladle: a plugin-based, multi-runtime model-serving framework.

The core imports no ML framework; runtimes, batchers, routers and scalers are plugins.
"""

from __future__ import annotations

from .batching import Batcher, BatchObserver, ReplicaSet
from .config import ModelConfig, ServerConfig
from .envelope import Arrays, Batch, BatchItem, CancelSignal, InferenceRequest, Priority, TraceContext
from .errors import (
    ClientError,
    ConfigError,
    DeadlineExceededError,
    DuplicatePluginError,
    InstanceFailedError,
    InvalidInputError,
    InvalidRequestError,
    LadleError,
    MissingDependencyError,
    ModelNotFoundError,
    ModelNotReadyError,
    PayloadTooLargeError,
    PluginError,
    PluginNotFoundError,
    RequestCancelledError,
    RuntimeFailureError,
    ServerBusyError,
    SignatureMismatchError,
    UnauthorizedError,
)
from .generation import (
    CacheSpec,
    GenerationChunk,
    GenerationResult,
    GenerationStream,
    SamplingParams,
    StepItem,
    StepRuntime,
    TextGenerator,
    TextTokenizer,
    Usage,
)
from .hookspecs import hookimpl, hookspec
from .instance import Instance, RuntimeInfo, ThreadExecutor, make_executor
from .kvcache import BlockPool, KVCacheManager
from .plugin_host import API_VERSION, PluginHost, Register, Registration
from .repository import ModelRepository
from .routing import Route, Router, RoutingTable, Target
from .runtime import InstanceState, Runtime, RuntimeSpec
from .scaling import Placement, ScalingPolicy, VersionMetrics
from .tensors import Signature, TensorSpec

__version__ = "0.1.0"

__all__ = [
    "API_VERSION",
    "Arrays",
    "Batch",
    "BatchItem",
    "BatchObserver",
    "Batcher",
    "BlockPool",
    "CacheSpec",
    "CancelSignal",
    "ClientError",
    "ConfigError",
    "DeadlineExceededError",
    "DuplicatePluginError",
    "GenerationChunk",
    "GenerationResult",
    "GenerationStream",
    "InferenceRequest",
    "Instance",
    "InstanceFailedError",
    "InstanceState",
    "InvalidInputError",
    "InvalidRequestError",
    "KVCacheManager",
    "LadleError",
    "MissingDependencyError",
    "ModelConfig",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "ModelRepository",
    "PayloadTooLargeError",
    "Placement",
    "PluginError",
    "PluginHost",
    "PluginNotFoundError",
    "Priority",
    "Register",
    "Registration",
    "ReplicaSet",
    "RequestCancelledError",
    "Route",
    "Router",
    "RoutingTable",
    "Runtime",
    "RuntimeFailureError",
    "RuntimeInfo",
    "RuntimeSpec",
    "SamplingParams",
    "ScalingPolicy",
    "ServerBusyError",
    "ServerConfig",
    "Signature",
    "SignatureMismatchError",
    "StepItem",
    "StepRuntime",
    "Target",
    "TensorSpec",
    "TextGenerator",
    "TextTokenizer",
    "ThreadExecutor",
    "TraceContext",
    "UnauthorizedError",
    "Usage",
    "VersionMetrics",
    "__version__",
    "hookimpl",
    "hookspec",
    "make_executor",
]
