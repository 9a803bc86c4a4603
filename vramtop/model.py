"""Immutable samples: the one data type every source produces and every sink consumes.

All memory figures are integers in bytes; ``None`` means "not available" (the driver does not
support the query, permission was refused, or the value is N/A), never zero.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# Where a process PID from NVML could be matched to a process on this host.
VISIBLE = "ok"  # psutil found it and it holds /dev/nvidia* open (or we could not check)
NOT_VISIBLE = "not-visible"  # no such PID here: typically a process in another container
MISMATCH = "mismatch"  # the PID exists here but is another process (PID namespaces)


@dataclass(frozen=True)
class ProcessSample:
    """One process using one GPU (``nvidia-smi --query-compute-apps``)."""

    pid: int  # host PID as NVML reports it (``pid``)
    gpu_uuid: str
    used_memory: int | None  # bytes (``used_memory``); None when NVML reports N/A
    kind: str  # "C" compute, "G" graphics, "C+G" both (nvidia-smi's Type column)
    gpu_instance_id: int | None = None  # MIG GPU instance (nvidia-smi's GI ID)
    compute_instance_id: int | None = None  # MIG compute instance (CI ID)
    visibility: str = VISIBLE
    name: str | None = None  # executable name (``process_name``)
    command: str | None = None  # full command line
    user: str | None = None
    host_rss: int | None = None  # bytes of host RAM (resident set)
    create_time: float | None = None  # process start, seconds since the epoch (guards PID reuse)
    pid_namespace: int | None = None  # inode of /proc/<pid>/ns/pid, where it could be read
    ns_pid: int | None = None  # the PID in its own (innermost) namespace (/proc/<pid>/status NSpid)


@dataclass(frozen=True)
class MigDeviceSample:
    """A MIG device (GPU instance + compute instance) carved out of a GPU."""

    index: int
    uuid: str
    gpu_instance_id: int | None
    compute_instance_id: int | None
    memory_total: int | None
    memory_used: int | None
    memory_free: int | None


@dataclass(frozen=True)
class GpuSample:
    """One physical GPU. Each memory field equals the nvidia-smi field named beside it."""

    index: int  # NVML index (``index``); may differ from CUDA's order, so key by uuid
    uuid: str  # ``uuid``
    name: str  # ``name``
    memory_total: int | None = None  # ``memory.total``
    memory_used: int | None = None  # ``memory.used`` (excludes driver-reserved memory)
    memory_free: int | None = None  # ``memory.free``
    memory_reserved: int | None = None  # ``memory.reserved`` (driver/firmware; None before v2)
    utilization_gpu: int | None = None  # percent, ``utilization.gpu``
    utilization_memory: int | None = None  # percent, ``utilization.memory``
    pcie_tx: int | None = None  # bytes/s sent by the GPU over PCIe (``nvidia-smi dmon -s t``)
    pcie_rx: int | None = None  # bytes/s received by the GPU
    temperature: int | None = None  # degrees C, ``temperature.gpu``
    power_usage: int | None = None  # milliwatts, ``power.draw``
    power_limit: int | None = None  # milliwatts, ``enforced.power.limit``
    pci_bus_id: str | None = None  # ``pci.bus_id``
    mig_enabled: bool | None = None  # ``mig.mode.current``
    mig_devices: tuple[MigDeviceSample, ...] = ()
    processes: tuple[ProcessSample, ...] = ()
    error: str | None = None  # set when this GPU could not be read (e.g. fell off the bus)
    host: str | None = None  # another host's GPU, read from its exporter (read-only); None: this host's


@dataclass(frozen=True)
class HostSample:
    """The host's RAM: offloading moves GPU memory here."""

    hostname: str
    memory_total: int
    memory_used: int  # total - available: what new programs cannot have
    swap_total: int = 0
    swap_used: int = 0
    pid_namespace: int | None = None  # the monitor's own PID namespace (inode), for the agent join


@dataclass(frozen=True)
class AllocatorStats:
    """One CUDA device as PyTorch's caching allocator sees it.

    Each field equals the ``torch.cuda.memory_stats(device)`` key named beside it.
    """

    allocated: int  # allocated_bytes.all.current: bytes in live tensors
    reserved: int  # reserved_bytes.all.current: bytes cudaMalloc'd by the allocator
    active: int  # active_bytes.all.current
    requested: int  # requested_bytes.all.current: what callers asked for, before rounding
    inactive_split: int  # inactive_split_bytes.all.current: free bytes inside split blocks
    allocated_peak: int  # allocated_bytes.all.peak (never reset by vramtop)
    reserved_peak: int  # reserved_bytes.all.peak
    num_alloc_retries: int  # num_alloc_retries: cache flushed and cudaMalloc retried
    num_ooms: int  # num_ooms
    num_sync_all_streams: int = 0  # num_sync_all_streams
    num_device_alloc: int = 0  # num_device_alloc: cudaMalloc calls
    num_device_free: int = 0  # num_device_free: cudaFree calls
    largest_free_block: int | None = None  # biggest free block in reserved segments (snapshot)
    free_in_segments: int | None = None  # all free bytes in reserved segments, same snapshot
    segments: int | None = None  # reserved segments at the last snapshot
    snapshot_time: float | None = None  # when largest_free_block was measured


@dataclass(frozen=True)
class TensorCensus:
    """Bytes of tensors the agent found and counted itself, deduplicated by storage."""

    parameters_trainable: int
    parameters_frozen: int
    gradients: int
    optimizer_state: int
    time: float
    seen: str  # what discovery saw, e.g. "1 optimizer (AdamW), 1 model (GPT2LMHeadModel), ..."
    complete: bool = True  # False: something could not be attributed (see ``seen``)
    gradients_peak: int = 0  # most gradient bytes any census has seen (all grads exist at once
    # in the optimizer step, while a census at a random moment may see them freed)
    parameters_16bit: int = 0  # of the parameters above, bytes in 16-bit (or narrower) float types
    buffers: int = 0  # module buffers (running statistics, masks): persistent, not parameters


@dataclass(frozen=True)
class StepPeak:
    """Memory over the last completed training step (optimizer step to optimizer step)."""

    step: int  # optimizer steps completed when it ended (fast steps are grouped: see duration)
    duration: float  # seconds
    peak_allocated: int  # bytes; the allocator's own peak when ``exact``
    peak_reserved: int
    persistent: int  # allocated bytes at the step boundary (after optimizer.step)
    exact: bool  # True: the allocator's peak rose during the step, so this is the true peak;
    # False: the highest value sampled during the step, a lower bound.
    steps: int = 1  # optimizer steps in this window (steps faster than 50 ms are grouped)


# Phases of a training step, in order; a peak is placed in the one during which it was reached.
BETWEEN_STEPS, FORWARD, LOSS, BACKWARD, OPTIMIZER = "between steps", "forward", "loss", "backward", "optimizer"
STEP_PHASES = (BETWEEN_STEPS, FORWARD, LOSS, BACKWARD, OPTIMIZER)


@dataclass(frozen=True)
class PeakBill:
    """What the allocator's peak (``allocated_bytes.all.peak``) was made of when it was reached.

    The agent reads the peak counter at the phase boundaries of a step (model call, first
    backward hook, each gradient's accumulation, optimizer step): the counter only grows, so
    the interval in which it last rose is the phase of the peak, and gradients, optimizer state
    and kept tensors are counted as they were then. Activations and temporaries are what is
    left (analysis/bill.py derives them).
    """

    allocated: int  # the peak counter right after it rose
    step: int  # the step (counting from 1, as StepPeak.step) during which it was reached
    phase: str  # one of STEP_PHASES, or "unknown"
    parameters_trainable: int
    parameters_frozen: int
    buffers: int
    gradients: int  # gradient bytes that existed at the peak
    optimizer_state: int  # 0 before the first optimizer step (Adam creates its state lazily)
    other_persistent: int  # held from before the step: kept outputs, inputs, caches (buffers apart)
    measured: bool = True  # False: the peak rose in a step the agent did not measure; phase,
    # gradients and kept memory are those of the last measured peak (``basis_step``)
    basis_step: int | None = None


@dataclass(frozen=True)
class AgentDevice:
    """One device used by a process with the agent."""

    index: int  # CUDA device index inside the process
    uuid: str | None  # GPU UUID as NVML prints it ("GPU-..."); joins with GpuSample.uuid
    name: str | None
    stats: AllocatorStats
    census: TensorCensus | None = None
    last_step: StepPeak | None = None
    peak_step: int | None = None  # the step during which allocated_peak was last raised
    peak: PeakBill | None = None  # the bill at the allocator's peak, measured in its phase
    memory_total: int | None = None  # the device's memory as CUDA reports it (a MIG slice's own)
    memory_limit: int | None = None  # the process's cap (set_per_process_memory_fraction), when set


@dataclass(frozen=True)
class CodeFrame:
    """One line of Python code that was running (a frame of a stack)."""

    file: str  # the code's file name, as Python knows it (usually absolute)
    line: int
    function: str
    library: bool = False  # in an installed package (site-packages), not the program's own code


@dataclass(frozen=True)
class LiveAllocation:
    """A block allocated at an OOM, with the stack that allocated it (allocation history on)."""

    size: int  # bytes of the block
    frames: tuple[CodeFrame, ...] = ()  # innermost first; torch's and the standard library's left out


@dataclass(frozen=True)
class OomReport:
    """What the allocator and the bill looked like at the instant of a CUDA out-of-memory
    error in this process (even one the program caught). Captured by the agent on the thread
    that failed to allocate, before the exception reached the program."""

    time: float
    device: int  # CUDA device index in the process
    requested: int  # bytes the failing allocation asked for
    device_limit: int  # the device's memory, or the process's cap (set_per_process_memory_fraction)
    device_free: int  # free on the device at that moment
    allocated: int  # allocated_bytes.all.current then
    reserved: int  # reserved_bytes.all.current then
    step: int  # optimizer steps completed
    phase: str  # forward | backward | optimizer | unknown
    largest_free_block: int | None = None  # in the allocator's cache
    largest_live_blocks: tuple[int, ...] = ()  # the biggest allocated blocks, bytes (no stack traces)
    census: TensorCensus | None = None  # parameters, gradients, optimizer state then
    path: str | None = None  # the post-mortem file the agent wrote
    device_total: int | None = None  # the device's whole memory (device_limit is less under a cap)
    step_peak: int | None = None  # the allocator's peak at the last step boundary before the OOM
    persistent_first: int | None = None  # allocated at the first step boundary with optimizer state
    persistent_first_step: int | None = None
    persistent_last: int | None = None  # allocated at the last step boundary before the OOM
    persistent_last_step: int | None = None
    pid: int | None = None  # the process (in its own PID namespace)
    # Where it happened (None/empty in recordings made before vramtop knew).
    module: str | None = None  # the module running, as named_modules names it under the outermost
    # module called ("model.layers.11.mlp"); in backward, the module of the nearest parameter
    module_class: str | None = None  # its class ("LlamaMLP")
    module_near: bool = False  # True: backward ran no module code; ``module`` owns the parameter
    # nearest (in the autograd graph) to the node that failed, not necessarily the failing code
    autograd_node: str | None = None  # in backward, the node running ("MmBackward0")
    place_note: str | None = None  # in backward, why no module was found, when none was
    frames: tuple[CodeFrame, ...] = ()  # the innermost frames outside torch, vramtop and the
    # standard library, innermost first; the program's own innermost line is always among them
    largest_allocations: tuple[LiveAllocation, ...] = ()  # with ``vramtop run --trace``: by stack
    trace_path: str | None = None  # with --trace: the allocation history (memory_viz's pickle)
    trace_note: str | None = None  # with --trace: why there is no history file, when there is none


@dataclass(frozen=True)
class Launch:
    """What a distributed launcher (torchrun, accelerate, DeepSpeed's launcher) put in the
    process's environment, read once when the agent starts: the ranks of one job share ``run_id``
    and ``master``, and the ranks on one node their launcher (``parent_pid``)."""

    rank: int | None = None  # RANK
    local_rank: int | None = None  # LOCAL_RANK: the rank's place on its node
    world_size: int | None = None  # WORLD_SIZE
    local_world_size: int | None = None  # LOCAL_WORLD_SIZE: ranks on this node
    run_id: str | None = None  # TORCHELASTIC_RUN_ID (torchrun's --rdzv-id; "none" when not given)
    master: str | None = None  # MASTER_ADDR:MASTER_PORT, the job's rendezvous
    parent_pid: int | None = None  # the launcher: the process's parent, in its own PID namespace


@dataclass(frozen=True)
class RemoteDevice:
    """One device of a process on another host, as that host's exporter published it
    (docs/exporter.md): figures computed there, read-only here."""

    gpu_index: int | None
    gpu_uuid: str | None  # joins with that host's GpuSample.uuid
    allocated: int | None = None  # vramtop_torch_memory_allocated_bytes
    reserved: int | None = None
    requested: int | None = None
    fragmentation: float | None = None  # vramtop_torch_fragmentation_ratio
    largest_free_block: int | None = None
    alloc_retries: int | None = None
    ooms: int | None = None
    bill: tuple[tuple[str, int], ...] = ()  # (category label, bytes): vramtop_bill_bytes
    headroom: int | None = None  # vramtop_headroom_bytes: limit - projected step peak
    step_peak: int | None = None  # vramtop_step_peak_bytes: reserved at the allocator's peak + non-PyTorch
    limit: int | None = None  # the GPU's total there (what headroom is measured against)


@dataclass(frozen=True)
class RemoteFigures:
    """Where a remote agent's figures come from and how old they are."""

    host: str
    as_of: float | None  # when that host's exporter read them (its vramtop_last_sample_timestamp_seconds)
    devices: tuple[RemoteDevice, ...] = ()
    warnings: tuple[str, ...] = ()  # "level kind" of each vramtop_warning in force for the process


@dataclass(frozen=True)
class AgentSample:
    """What the in-process agent reports about its own process."""

    pid: int  # the process's PID in its own namespace
    time: float
    torch_version: str
    pid_namespace: int | None = None  # inode of its /proc/self/ns/pid: joins with ProcessSample
    devices: tuple[AgentDevice, ...] = ()
    step: int = 0  # optimizer steps observed
    phase: str = "unknown"  # forward | backward | optimizer | unknown
    rank: int | None = None  # torch.distributed rank (RANK), when known
    expandable_segments: bool | None = None
    dropped: int = 0  # frames the agent dropped because a monitor was slow
    host_pid: int | None = None  # the PID as NVML reports it, when the monitor could match it
    error: str | None = None  # the agent's last internal error (it keeps going; shown, not hidden)
    last_oom: OomReport | None = None  # the latest out-of-memory error, kept for the process's life
    autocast: bool | None = None  # a model's forward ran under torch.autocast; None: no forward seen
    world_size: int | None = None  # torch.distributed world size, once the process group exists
    checkpointing: bool | None = None  # a model says gradient checkpointing is on (Transformers'
    # is_gradient_checkpointing); None: no model says either way
    launch: Launch | None = None  # the launcher's environment; None from older agents
    attached: bool = False  # started late by ``vramtop attach``: models and optimizers are found
    # from then on, so the categories come with the first optimizer step after the attach
    remote: RemoteFigures | None = None  # another host's process, read from its exporter


@dataclass(frozen=True)
class AgentEvent:
    """Something an agent reported between two samples: today, an OOM with its post-mortem
    (``oom``), sent from the failing thread or read from the file it left."""

    kind: str  # "oom"
    pid: int  # the process, as its agent knows it (its own PID namespace)
    time: float
    oom: OomReport | None = None


@dataclass(frozen=True)
class Sample:
    """Everything known at one instant."""

    time: float  # seconds since the epoch when the sample was taken
    host: HostSample
    gpus: tuple[GpuSample, ...] = ()
    driver_version: str | None = None
    cuda_driver_version: str | None = None  # e.g. "13.0"
    error: str | None = None  # why the source could not produce fresh data
    stale_since: float | None = None  # time of the last fresh data, when this sample is stale
    agents: tuple[AgentSample, ...] = ()  # processes running the vramtop agent
    events: tuple[AgentEvent, ...] = ()  # what agents reported since the previous sample
    problems: tuple[str, ...] = ()  # what kept agents from being read (e.g. an unsafe socket directory)
    remote_agents: tuple[AgentSample, ...] = ()  # other hosts' processes with the agent (--remote,
    # --prometheus): kept apart from ``agents``, which the join matches with this host's processes

    @property
    def stale(self) -> bool:
        return self.stale_since is not None

    def gpu(self, uuid: str) -> GpuSample | None:
        return next((g for g in self.gpus if g.uuid == uuid), None)

    def as_stale(self, error: str) -> Sample:
        """The same data, marked as old because the source failed with ``error``. Nothing arrived
        since: the events were delivered with the original and are not repeated."""
        return replace(self, error=error, stale_since=self.stale_since or self.time, events=())
