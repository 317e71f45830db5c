"""ladle: a plugin-based, multi-runtime model-serving framework.

The core imports no ML framework; runtimes, batchers, routers and scalers are plugins.

The public API is exactly what this module exports (``ladle.__all__``) plus ``ladle.testing`` (the
conformance kits and test helpers). Plugins, built-in ones included, import only these; every other
module is an implementation detail that may change without notice.
"""

from __future__ import annotations

from .admission import Admission, Answer, AnswerStream, Call, Pending, Stage
from .batching import Batcher, BatchObserver, Foreground, ReplicaSet
from .config import ModelConfig, ServerConfig
from .envelope import (
    Arrays,
    Batch,
    BatchItem,
    CancelSignal,
    InferenceRequest,
    Priority,
    TraceContext,
    new_request_id,
)
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
    TooManyRequestsError,
    UnauthorizedError,
)
from .executors import (
    DedicatedThread,
    Executor,
    ItemResult,
    ProcessExecutor,
    RuntimeInfo,
    ThreadExecutor,
    build_runtime,
    execute_isolated,
    make_executor,
)
from .generation import (
    CacheSpec,
    ChatMessage,
    FinishReason,
    GenerationChunk,
    GenerationPayload,
    GenerationResult,
    GenerationStream,
    IncrementalDecoder,
    SamplingParams,
    StepItem,
    StepRuntime,
    TextTokenizer,
    Usage,
)
from .gpus import Gpu, format_bytes, machine_gpus, nvml_process_memory, parse_gpus
from .hookspecs import hookimpl, hookspec
from .instance import Instance
from .kvcache import BlockCopy, BlockPool, KVCacheManager, blocks_for_budget
from .options import PluginOptions, as_tuple, parse_options
from .packing import Assignment, Demand, InstanceKey, Move, Plan, pack, replan
from .plugin_host import API_VERSION, PluginHost, Register, Registration, RuntimeCapabilities
from .queueing import QueueEntry, QueueingBatcher, QueueOptions, Taken
from .repository import ModelRepository
from .routing import Route, Router, RoutingTable, ShadowSettings, Target
from .runtime import InstanceState, Runtime, RuntimeSpec, named_input, process_rss_bytes, run_fixed_batches
from .scaling import Placement, ScalingPolicy, VersionMetrics
from .splits import WeightedOptions, WeightedRouter, WeightedSplit, stable_bucket
from .tensors import DATATYPES, Signature, TensorSpec, datatype_of, numpy_dtype

__version__ = "0.1.0"

__all__ = [
    "API_VERSION",
    "DATATYPES",
    "Admission",
    "Answer",
    "AnswerStream",
    "Arrays",
    "Assignment",
    "Batch",
    "BatchItem",
    "BatchObserver",
    "Batcher",
    "BlockCopy",
    "BlockPool",
    "CacheSpec",
    "Call",
    "CancelSignal",
    "ChatMessage",
    "ClientError",
    "ConfigError",
    "DeadlineExceededError",
    "DedicatedThread",
    "Demand",
    "DuplicatePluginError",
    "Executor",
    "FinishReason",
    "Foreground",
    "GenerationChunk",
    "GenerationPayload",
    "GenerationResult",
    "GenerationStream",
    "Gpu",
    "IncrementalDecoder",
    "InferenceRequest",
    "Instance",
    "InstanceFailedError",
    "InstanceKey",
    "InstanceState",
    "InvalidInputError",
    "InvalidRequestError",
    "ItemResult",
    "KVCacheManager",
    "LadleError",
    "MissingDependencyError",
    "ModelConfig",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "ModelRepository",
    "Move",
    "PayloadTooLargeError",
    "Pending",
    "Placement",
    "Plan",
    "PluginError",
    "PluginHost",
    "PluginNotFoundError",
    "PluginOptions",
    "Priority",
    "ProcessExecutor",
    "QueueEntry",
    "QueueOptions",
    "QueueingBatcher",
    "Register",
    "Registration",
    "ReplicaSet",
    "RequestCancelledError",
    "Route",
    "Router",
    "RoutingTable",
    "Runtime",
    "RuntimeCapabilities",
    "RuntimeFailureError",
    "RuntimeInfo",
    "RuntimeSpec",
    "SamplingParams",
    "ScalingPolicy",
    "ServerBusyError",
    "ServerConfig",
    "ShadowSettings",
    "Signature",
    "SignatureMismatchError",
    "Stage",
    "StepItem",
    "StepRuntime",
    "Taken",
    "Target",
    "TensorSpec",
    "TextTokenizer",
    "ThreadExecutor",
    "TooManyRequestsError",
    "TraceContext",
    "UnauthorizedError",
    "Usage",
    "VersionMetrics",
    "WeightedOptions",
    "WeightedRouter",
    "WeightedSplit",
    "__version__",
    "as_tuple",
    "blocks_for_budget",
    "build_runtime",
    "datatype_of",
    "execute_isolated",
    "format_bytes",
    "hookimpl",
    "hookspec",
    "machine_gpus",
    "make_executor",
    "named_input",
    "new_request_id",
    "numpy_dtype",
    "nvml_process_memory",
    "pack",
    "parse_gpus",
    "parse_options",
    "process_rss_bytes",
    "replan",
    "run_fixed_batches",
    "stable_bucket",
]
