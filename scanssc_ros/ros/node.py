"""``scanssc_node``: camera topics in, semantic voxel grid out.

Thin wiring: subscription callbacks hand messages to :class:`FrameSync` (pairing, newest-only mailbox); one worker
thread takes the newest input set, runs :class:`FrameProcessor` (decode, depth prior, Predictor) and publishes what
:class:`OutputBuilder` encodes. Inference never runs in an executor callback, so parameter and service calls stay
responsive while the model is busy, and outputs never lag behind by more than the frame being processed.

The worker is the only thread that runs torch, from loading the model on: OpenMP keeps one thread team per thread
that starts a parallel region, and with a second team (the main thread's, from loading and the warm-up) libgomp
counts more threads than cores and stops spinning between parallel regions, so every region woke its helper
through the kernel. In a reproduction on 2 cores (lite, model loaded on the main thread, inference on another) that
cost 441-497 instead of 374-393 ms per frame, with 21-25 instead of 4 ms of system time; the worker's own malloc
arena cost as much again (``malloc_tuning``: ``main()`` gives every thread the one tuned arena).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import Future
from typing import Any, Dict, List, Optional

import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_policy_name_from_kind
from rclpy.signals import SignalHandlerOptions

from scanssc_ros.ros.params import KITTI_CAM_FROM_GRID, PARAMS, PARAMS_BY_NAME, ParameterError, ParamSpec
from scanssc_ros.ros.pipeline_stats import PipelineStats
from scanssc_ros.ros.placement import Placement, PlacementError, camera_height_above_floor, stamp_ns

HEIGHT_WARN_M = 0.3  # camera height off the training rig's by more than this: warn once (out of distribution)


class StartupError(RuntimeError):
    """The node cannot run (no/corrupt/wrong checkpoint, unavailable device...)."""


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    if spec.choices:
        desc.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.min is not None and spec.max is not None:
        if spec.kind is int:
            desc.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=1)]
        elif spec.kind is float:
            desc.floating_point_range = [FloatingPointRange(from_value=float(spec.min), to_value=float(spec.max))]
    return desc


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) or type(value).__name__ == "array" else value


def _qos(reliability: str, depth: int, transient: bool = False) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=int(depth),
        reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient else DurabilityPolicy.VOLATILE)


def load_predictor(params: Dict[str, Any], log: Any) -> Any:
    """The Predictor the parameters ask for, or a StartupError that names the problem."""
    from scanssc_ros.checkpoint import check_variant  # torch-heavy imports only once parameters are valid
    from scanssc_ros.config import variant
    from scanssc_ros.predictor import Predictor

    kwargs = dict(device=params["device"], precision=params["precision"], mark_unseen=params["mark_unseen"])
    path = params["checkpoint"]
    try:
        if not path:
            if not params["allow_untrained"]:
                raise StartupError("no checkpoint given: set the 'checkpoint' parameter (launch argument "
                                   "checkpoint:=/path/model.pt), or allow_untrained:=true for wiring tests")
            log.warning(f"no checkpoint: running an UNTRAINED {params['variant']!r} model (allow_untrained); "
                        "its output is meaningless")
            return Predictor.from_config(variant(params["variant"]), **kwargs)
        if not os.path.isfile(path):
            raise StartupError(f"checkpoint {path!r} " + ("is a directory, not a checkpoint file"
                                                          if os.path.isdir(path) else "does not exist"))
        predictor = Predictor(path, **kwargs)
        check_variant(predictor.config, params["variant"], source=f"checkpoint {path!r}")
        return predictor
    except StartupError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt file, wrong variant, no CUDA...: all refuse to start
        raise StartupError(f"{type(exc).__name__}: {exc}") from None


class ScanSSCNode(Node):
    def __init__(self, predictor: Any = None, **kwargs: Any) -> None:
        super().__init__("scanssc_node", **kwargs)
        self.params: Dict[str, Any] = self._declare_parameters()
        self._setup_done = False
        self._stop = threading.Event()
        self._running = threading.Event()  # set once set-up is over: the worker may take frames (or stop)
        loaded: Future = Future()
        self._worker = threading.Thread(target=self._run, args=(predictor, loaded), name="scanssc_inference",
                                        daemon=True)
        self._worker.start()
        try:
            self._set_up(loaded.result())
        except BaseException:  # a refused start, or a signal during it: the worker must not wait forever
            self._stop.set()
            self._running.set()
            raise
        self._setup_done = True
        self._running.set()
        cfg = self.predictor.config
        self.get_logger().info(
            f"scanssc_node ready: variant={cfg.variant} device={self.params['device']} "
            f"precision={self.params['precision']} depth_mode={self.params['depth_mode']} "
            f"image_transport={self.params['image_transport']} "
            f"grid={'x'.join(map(str, cfg.grid_dims))} label_set={self.label_set.name}"
            + (" (cv_bridge)" if self.processor.uses_cv_bridge else "")
            + (f"; {tuning}" if (tuning := getattr(self.predictor, "malloc_tuning", None)) else ""))

    def _set_up(self, predictor: Any) -> None:
        from scanssc_ros.labels import LABEL_SETS
        from scanssc_ros.ros.frame_processor import FrameProcessor
        from scanssc_ros.ros.frame_sync import DropCounter, FrameSync, LatestSlot
        from scanssc_ros.ros.input_loss import LossDetector
        from scanssc_ros.ros.outputs import OutputBuilder

        self.predictor = predictor
        cfg = self.predictor.config
        self.label_set = next((s for s in LABEL_SETS.values() if s.num_classes == cfg.num_classes), None)
        if self.label_set is None:
            raise StartupError(f"no label set has {cfg.num_classes} classes")
        self.grid = cfg.grid
        T = np.asarray(self.params["cam_from_grid"], np.float64).reshape(4, 4)
        self.processor = FrameProcessor(self.predictor, T, rectify=self.params["rectify_input"])
        self.outputs = OutputBuilder(self.grid, self.label_set, T)
        self.placement = Placement(T, self.params["base_frame"],
                                   np.asarray(self.params["grid_in_base"], np.float64).reshape(4, 4),
                                   self.params["grid_frame"])
        # the SemanticKITTI camera height above the grid floor: what every released / KITTI-trained model saw
        self._trained_height = camera_height_above_floor(
            np.asarray(KITTI_CAM_FROM_GRID, np.float64).reshape(4, 4), cfg.grid_origin[2])
        self.output_opts = self._output_options(self.params)
        self.drops = DropCounter()
        self.slot = LatestSlot(self.drops)
        self.sync = FrameSync(self.params["depth_mode"], self.slot, self.drops, self.params["sync_tolerance"])
        self.loss = LossDetector(self.drops, self.params["sync_tolerance"])
        self.stats = PipelineStats(self.drops)
        self._lock = threading.Lock()  # guards params/options read by the worker
        self._warned: Dict[str, float] = {}
        self._last_stamp: Optional[float] = None
        self._tf_sent_for: Optional[str] = None

        self._make_publishers()
        self._make_subscriptions()
        self._make_tf_subscriptions()
        self._diag_timer = self.create_timer(self.params["diagnostics_period"], self._publish_diagnostics)
        # frames whose camera_info or partner never comes, and images lost before the callback, are only noticed
        # by the passing of time
        self._input_timer = self.create_timer(0.1, self._poll_inputs)
        from std_srvs.srv import SetBool

        self.create_service(SetBool, "~/enable", self._on_enable)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ------------------------------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> Dict[str, Any]:
        values: Dict[str, Any] = {}
        problems: List[str] = []
        for spec in PARAMS:
            try:
                value = self.declare_parameter(spec.name, spec.default, _descriptor(spec)).value
            except Exception as exc:  # rclpy raises several types for wrong type / out of range overrides
                problems.append(f"{spec.name}: {exc}")
                continue
            value = _plain(value)
            problem = spec.validate(value)
            if problem:
                problems.append(problem)
            values[spec.name] = value
        if problems:
            raise ParameterError("; ".join(problems))
        return values

    def _output_options(self, p: Dict[str, Any]) -> Any:
        from scanssc_ros.ros.outputs import OutputOptions, parse_class_filter

        try:
            class_filter = parse_class_filter(p["class_filter"], self.label_set)
        except ValueError as exc:
            raise ParameterError(str(exc)) from None
        occupancy_rule = obstacles = None
        if p["publish_occupancy"] or p["publish_obstacles"]:
            occupancy_rule = self._ground_rule(p)
        if p["publish_obstacles"]:
            from scanssc_ros.occupancy import ObstacleFilter

            if p["obstacle_min_height"] >= p["obstacle_max_height"]:
                raise ParameterError(f"obstacle_min_height {p['obstacle_min_height']} must be below "
                                     f"obstacle_max_height {p['obstacle_max_height']}")
            try:
                classes = parse_class_filter(p["obstacle_classes"], self.label_set, "obstacle_classes")
            except ValueError as exc:
                raise ParameterError(str(exc)) from None
            ground_classes = sorted(self.label_set.classes[c] for c in (classes or ())
                                    if c in occupancy_rule.traversable)
            if ground_classes:
                raise ParameterError(f"obstacle_classes: {', '.join(ground_classes)} are traversable "
                                     "(occupancy_traversable), never obstacles")
            obstacles = ObstacleFilter(occupancy_rule, (p["obstacle_min_height"], p["obstacle_max_height"]), classes)
        return OutputOptions(
            output_frame=p["output_frame"], grid_frame=p["grid_frame"], publish_grid=p["publish_grid"],
            publish_markers=p["publish_markers"], publish_cloud=p["publish_cloud"],
            confidence_threshold=p["confidence_threshold"], class_filter=class_filter,
            surface_only=p["surface_only"], max_voxels=p["max_voxels"], marker_lifetime=p["marker_lifetime"],
            occupancy=occupancy_rule if p["publish_occupancy"] else None, obstacles=obstacles,
            grid_encoding=p["grid_encoding"], grid_confidence=p["grid_confidence"])

    def _ground_rule(self, p: Dict[str, Any]) -> Any:
        """The ground and traversable classes (and the cell rule) of ~/occupancy, also used by ~/obstacles."""
        from scanssc_ros.occupancy import OccupancyRule

        if self.grid.dims[2] > 64:
            raise ParameterError(f"publish_occupancy / publish_obstacles need grids of at most 64 layers, the model's "
                                 f"has {self.grid.dims[2]}: set both false")
        names = [n.strip() for n in p["occupancy_traversable"].split(",") if n.strip()]
        if p["occupancy_min_height"] >= p["occupancy_max_height"]:
            raise ParameterError(f"occupancy_min_height {p['occupancy_min_height']} must be below "
                                 f"occupancy_max_height {p['occupancy_max_height']}")
        if any(d % p["occupancy_cell_voxels"] for d in self.grid.dims[:2]):
            raise ParameterError(f"occupancy_cell_voxels {p['occupancy_cell_voxels']} does not divide the grid "
                                 f"{self.grid.dims[0]}x{self.grid.dims[1]}")
        try:
            return OccupancyRule.from_names(
                names, self.label_set.classes, band=(p["occupancy_min_height"], p["occupancy_max_height"]),
                ground_z=p["occupancy_ground_z"], factor=p["occupancy_cell_voxels"],
                use_confidence=p["occupancy_use_confidence"])
        except ValueError as exc:
            raise ParameterError(str(exc)) from None

    def _on_set_parameters(self, params: List[Parameter]) -> SetParametersResult:
        updated = dict(self.params)
        for p in params:
            spec = PARAMS_BY_NAME.get(p.name)
            if spec is None:  # e.g. use_sim_time: rclpy validates its own parameters
                continue
            value = _plain(p.value)
            problem = spec.validate(value)
            if problem:
                self.get_logger().warning(f"rejected parameter update: {problem}")
                return SetParametersResult(successful=False, reason=problem)
            updated[p.name] = value
        try:
            opts = self._output_options(updated) if self._setup_done else None
        except ParameterError as exc:
            self.get_logger().warning(f"rejected parameter update: {exc}")
            return SetParametersResult(successful=False, reason=str(exc))
        with self._lock:
            self.params = updated
            if opts is not None:
                self.output_opts = opts
                self.sync.tolerance = self.loss.tolerance = float(updated["sync_tolerance"])
        if self._setup_done and any(p.name == "diagnostics_period" for p in params):
            self._diag_timer.cancel()
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(updated["diagnostics_period"], self._publish_diagnostics)
        return SetParametersResult(successful=True)

    def _on_enable(self, request: Any, response: Any) -> Any:
        result = self.set_parameters([Parameter("enable", value=bool(request.data))])[0]
        response.success = result.successful
        response.message = "processing enabled" if request.data else "processing disabled"
        return response

    # ------------------------------------------------------------------------------------------ graph
    def _make_publishers(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import PointCloud2
        from visualization_msgs.msg import MarkerArray

        from scanssc_ros.msg import SemanticVoxelGrid

        qos = _qos(self.params["output_reliability"], self.params["output_depth"])
        self.pubs = {
            "grid": self.create_publisher(SemanticVoxelGrid, "~/voxels", qos),
            "markers": self.create_publisher(MarkerArray, "~/voxel_markers", qos),
            "cloud": self.create_publisher(PointCloud2, "~/voxel_cloud", qos),
            "obstacles": self.create_publisher(PointCloud2, "~/obstacles", qos),
        }
        try:
            from nav_msgs.msg import OccupancyGrid
        except ImportError:
            self.get_logger().warning("nav_msgs is not installed: no ~/occupancy")
        else:
            self.pubs["occupancy"] = self.create_publisher(OccupancyGrid, "~/occupancy", qos)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", _qos("reliable", 10))
        self.tf_pub = None
        if self.params["publish_tf"]:
            try:
                from tf2_msgs.msg import TFMessage
            except ImportError:
                self.get_logger().warning("publish_tf: tf2_msgs is not installed, the camera->grid transform is not "
                                          "published on /tf_static")
            else:
                self.tf_pub = self.create_publisher(TFMessage, "/tf_static", _qos("reliable", 1, transient=True))

    def _make_subscriptions(self) -> None:
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        qos = _qos(self.params["input_reliability"], self.params["input_depth"])
        mode = self.params["depth_mode"]
        sync = self.sync
        compressed = self.params["image_transport"] == "compressed"
        colour_type = CompressedImage if compressed else Image

        def colour(base: str) -> str:
            # image_transport's rule: the transport topic hangs off the resolved (remapped) base topic
            return self.resolve_topic_name(base) + "/compressed" if compressed else base

        def count(fn):  # callbacks only store references; counting them here keeps the rate meter honest
            def cb(msg):
                self.loss.on_image(msg)  # also while disabled: a pause must not look like lost images
                with self._lock:
                    if not self.params["enable"]:
                        self.drops.add("disabled")
                        return
                fn(msg)
            return cb

        self.subs = [
            self.create_subscription(colour_type, colour("left/image_rect"), count(self._on_left), qos),
            self.create_subscription(CameraInfo, "left/camera_info", self._on_left_info, qos),
        ]
        if mode == "stereo":
            self.subs += [self.create_subscription(colour_type, colour("right/image_rect"), sync.on_partner, qos),
                          self.create_subscription(CameraInfo, "right/camera_info", sync.on_right_info, qos)]
        elif mode == "depth":
            self.subs.append(self.create_subscription(Image, "depth/image", sync.on_partner, qos))

    def _make_tf_subscriptions(self) -> None:
        out = self.params["output_frame"]
        if not self.placement.uses_tf and out in ("", self.params["grid_frame"]):
            return  # the camera-fixed grid needs no TF; /tf can be heavy traffic for a Python node
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError:
            self.get_logger().warning("base_frame / output_frame need TF but tf2_msgs is not installed: the grid "
                                      "stays fixed to the camera by cam_from_grid")
            return

        def on_tf(static: bool):
            def cb(msg: Any) -> None:
                if self.placement.on_tf_message(msg, static):
                    self._warn("tf_bad", "ignored unusable transforms on " + ("/tf_static" if static else "/tf"))
            return cb

        self.subs += [self.create_subscription(TFMessage, "/tf", on_tf(False), _qos("reliable", 100)),
                      self.create_subscription(TFMessage, "/tf_static", on_tf(True),
                                               _qos("reliable", 100, transient=True))]

    def create_subscription(self, msg_type: Any, topic: str, callback: Any, qos_profile: Any, **kwargs: Any) -> Any:
        """Every subscription of this node is an input: a publisher whose QoS it cannot match is reported with the
        parameter that fixes it (rclpy's own warning names only the policy)."""
        try:
            from rclpy.event_handler import SubscriptionEventCallbacks
        except ImportError:  # Humble
            from rclpy.qos_event import SubscriptionEventCallbacks

        def incompatible(info: Any) -> None:
            policy = qos_policy_name_from_kind(info.last_policy_kind)
            fix = ("; a camera publishing best effort (sensor-data QoS) needs input_reliability: best_effort"
                   if policy == "RELIABILITY" and self.params["input_reliability"] == "reliable"
                   and topic not in ("/tf", "/tf_static") else "")
            self.get_logger().warning(f"a publisher on {self.resolve_topic_name(topic)} offers QoS this subscription "
                                      f"cannot accept ({policy}): nothing from it arrives{fix}")

        kwargs.setdefault("event_callbacks", SubscriptionEventCallbacks(incompatible_qos=incompatible))
        return super().create_subscription(msg_type, topic, callback, qos_profile, **kwargs)

    def _on_left(self, msg: Any) -> None:
        self.stats.frame_in()
        self.sync.on_left(msg)
        self._report_inputs()

    def _on_left_info(self, msg: Any) -> None:
        self.loss.on_info(msg)
        self.sync.on_left_info(msg)

    def _poll_inputs(self) -> None:
        self.sync.poll()
        self.loss.poll()
        self._report_inputs()

    def _report_inputs(self) -> None:
        for reason, why in self.sync.notes():
            if reason == "unpaired":
                self._warn("unpaired", f"left image dropped, no partner within sync_tolerance: {why}; are the "
                           "cameras stamped from one clock, and is the partner topic remapped?")
            else:
                self._warn("info", f"left image dropped ({reason}): {why}")
        for why in self.loss.notes():
            rel, depth = self.params["input_reliability"], self.params["input_depth"]
            if self.loss.images_received == 0:
                hint = ("is left/image_rect remapped, and does its publisher offer a reliability this subscription "
                        "accepts (a best-effort publisher does not reach a reliable subscription)?")
            elif rel == "best_effort":
                hint = ("large best-effort images are sent in fragments and lost with any one of them (Fast DDS): "
                        "use input_reliability reliable unless the camera only publishes best effort")
            else:
                hint = (f"the middleware keeps the newest {depth} per topic while the executor is busy: raise "
                        "input_depth")
            self._warn("lost", f"left images lost before the node's callback ({self.loss.lost} counted so far): "
                       f"{why}; input QoS {rel}, depth {depth}: {hint}")

    def _warn(self, key: str, text: str, period: float = 5.0) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -1e9) >= period:
            self._warned[key] = now
            self.get_logger().warning(text)

    # ------------------------------------------------------------------------------------------ worker
    def _run(self, predictor: Any, loaded: Future) -> None:
        """The worker thread: load the model (unless given) and warm it up, hand it to ``__init__``, then take
        frames once set-up is over."""
        try:
            if predictor is None:
                predictor = load_predictor(self.params, self.get_logger())
            if self.params["warmup"]:
                self._warm_up(predictor)
        except BaseException as exc:  # noqa: BLE001 - re-raised in __init__, on the thread that constructs
            loaded.set_exception(exc)
            return
        loaded.set_result(predictor)
        self._running.wait()
        if not self._stop.is_set():
            self._work()

    def _warm_up(self, predictor: Any) -> None:
        h, w = predictor.config.input_size
        K = np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1]], np.float64)
        T = np.asarray(self.params["cam_from_grid"], np.float64).reshape(4, 4)
        t = time.perf_counter()
        stereo = None if self.params["depth_mode"] == "mono" else np.full((h, w), 10.0, np.float32)
        predictor.predict(np.zeros((h, w, 3), np.uint8), K, T, stereo)
        self.get_logger().info(f"warm-up inference took {1e3 * (time.perf_counter() - t):.0f} ms")

    def _work(self) -> None:
        while not self._stop.is_set():
            fs = self.slot.take(timeout=0.1)
            if fs is None or self._stop.is_set():
                continue
            with self._lock:
                max_rate = float(self.params["max_rate"])
            if max_rate > 0:
                wait = self.stats.last_start + 1.0 / max_rate - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    break
                newer = self.slot.take(timeout=0)
                if newer is not None:
                    self.drops.add("rate_limited")
                    fs = newer
            try:
                self._process(fs)
            except Exception:  # noqa: BLE001 - the worker must survive anything a frame can cause
                self.drops.add("failed")
                self._warn("failed", "frame failed:\n" + traceback.format_exc())

    def _process(self, fs: Any) -> None:
        from scanssc_ros.ros.frame_processor import FrameError
        from scanssc_ros.ros.outputs import OutputFrameError

        t_start = time.monotonic()
        self.stats.last_start = t_start
        stamp = fs.stamp
        if self._last_stamp is not None and stamp <= self._last_stamp:
            if stamp == self._last_stamp:  # the same image again (e.g. republished): never publish it twice
                self.drops.add("duplicate")
                self._warn("dup", f"dropped a second frame stamped {stamp:.3f} s")
                return
            # a bag restarted or looped: follow the new time line rather than stall until it catches up
            self._warn("back", f"input time went back {self._last_stamp - stamp:.3f} s; following it")
        t_ns = stamp_ns(fs.left.header.stamp)
        camera_frame = str(getattr(fs.left_info.header, "frame_id", "")) or str(fs.left.header.frame_id)
        cam_from_grid, source = self.placement.cam_from_grid(camera_frame, t_ns)
        if source not in ("tf", "parameter"):
            self._warn("tf_fallback", f"grid placed by the cam_from_grid parameter: no camera pose from TF ({source})")
        self._check_height(cam_from_grid)
        try:
            result = self.processor.process(fs, cam_from_grid)
        except FrameError as exc:
            self.drops.add("rejected")
            self._warn(f"frame:{str(exc)[:40]}", f"frame skipped: {exc}")
            return
        if result.looks_unrectified and not self.params["rectify_input"]:
            self._warn("distorted", "left/camera_info has distortion coefficients but its projection P is just K: "
                       "it describes a raw, distorted image. If the images are raw, set rectify_input: true (or "
                       "rectify them with image_proc); the model is given P[:3, :3]", period=60.0)
        with self._lock:
            opts = self.output_opts
        wanted = {name: pub.get_subscription_count() > 0 for name, pub in self.pubs.items()}
        wanted.setdefault("occupancy", False)  # no publisher (nav_msgs missing): never build it
        pred = result.prediction
        try:
            frame_pose = self.placement.output_pose(opts.output_frame, result.camera_frame, cam_from_grid, t_ns)
            msgs, enc_times = self.outputs.build(pred.labels, pred.confidence, result.stamp, result.camera_frame,
                                                 opts, wanted, frame_pose=frame_pose, cam_from_grid=cam_from_grid)
        except (OutputFrameError, PlacementError) as exc:
            self.drops.add("no_transform")
            self._warn("output_frame", str(exc))
            return
        t_pub = time.perf_counter()
        for name, msg in msgs.items():
            self.pubs[name].publish(msg)
        self._send_tf(result, cam_from_grid)
        self._last_stamp = stamp
        times = dict(result.timings)
        times.update({f"model/{k}": v for k, v in pred.timings.items() if k != "total"})
        times["encode"] = sum(enc_times.values())
        times["publish"] = (time.perf_counter() - t_pub) * 1e3
        times["total"] = (time.monotonic() - fs.received) * 1e3  # from the complete input set to published
        self.stats.frame_out(times)

    def _check_height(self, cam_from_grid: np.ndarray) -> None:
        height = camera_height_above_floor(cam_from_grid, self.grid.origin[2])
        if abs(height - self._trained_height) > HEIGHT_WARN_M and "height" not in self._warned:
            self._warn("height", f"the camera is {height:.2f} m above the grid floor; models trained on "
                       f"SemanticKITTI saw {self._trained_height:.2f} m: the input is out of their training "
                       "distribution (check base_frame / grid_in_base / cam_from_grid)", period=1e9)

    def _send_tf(self, result: Any, cam_from_grid: np.ndarray) -> None:
        # grid fixed to the robot: base_frame -> grid_frame; else fixed to the camera: camera -> grid_frame
        frame = self.placement.base_frame or result.camera_frame
        if self.tf_pub is None or not frame or self._tf_sent_for == frame:
            return
        from geometry_msgs.msg import TransformStamped
        from tf2_msgs.msg import TFMessage

        from scanssc_ros.geometry import rotation_to_quaternion

        T = self.placement.grid_in_base if self.placement.base_frame else cam_from_grid
        tf = TransformStamped()
        tf.header.stamp = result.stamp
        tf.header.frame_id, tf.child_frame_id = frame, self.params["grid_frame"]
        tr = tf.transform.translation
        tr.x, tr.y, tr.z = (float(v) for v in T[:3, 3])
        r = tf.transform.rotation
        r.x, r.y, r.z, r.w = rotation_to_quaternion(T[:3, :3])
        self.tf_pub.publish(TFMessage(transforms=[tf]))
        self._tf_sent_for = frame

    # ------------------------------------------------------------------------------------------ reporting
    def _publish_diagnostics(self) -> None:
        snap = self.stats.snapshot()
        if snap["frames_dropped_new"]:
            self.get_logger().info(
                f"{snap['frames_dropped']} of {snap['frames_in']} frames dropped so far "
                f"({', '.join(f'{k}={v}' for k, v in sorted(snap['drops'].items()))})", throttle_duration_sec=10.0)
        if not self.params["publish_diagnostics"]:
            return
        from scanssc_ros.ros.voxel_encode import diagnostics_message

        stats = {
            "latency_ms": snap["latency_ms"], "input_rate_hz": snap["input_rate_hz"],
            "output_rate_hz": snap["output_rate_hz"], "frames_in": snap["frames_in"],
            "frames_dropped": snap["frames_dropped"], "frames_published": snap["frames_out"],
            "device": self.params["device"], "precision": self.params["precision"],
            "model": self.predictor.config.variant, "depth_mode": self.params["depth_mode"],
        }
        stats.update({f"dropped/{k}": v for k, v in sorted(snap["drops"].items())})
        if self.sync.waiting_for_info():
            stats["waiting_for"] = "camera_info"
        msg = diagnostics_message(stats, name=f"{self.get_name()}: pipeline", hardware_id=self.params["device"])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)

    # ------------------------------------------------------------------------------------------ shutdown
    def close(self, timeout: float = 1.0) -> bool:
        """Stop the worker; True when it finished within ``timeout`` (it is a daemon thread: an inference still
        running does not hold the process)."""
        self._stop.set()
        if not getattr(self, "_setup_done", False):
            return True
        self.slot.close()
        self._worker.join(timeout)
        return not self._worker.is_alive()


def main(argv: Optional[List[str]] = None) -> int:
    # Our own SIGINT/SIGTERM handling: rclpy's handlers did not reliably end spin() in the PyPI wheels, and a
    # flag checked between short spin_once() calls also stops the worker thread from one place. During start-up
    # (model load, warm-up: seconds) a signal interrupts the main thread instead, so a stop never waits for it.
    stop = threading.Event()
    starting = [True]

    def on_signal(*_: Any) -> None:
        stop.set()
        if starting[0]:
            starting[0] = False  # a second signal while unwinding must not interrupt the clean-up
            raise KeyboardInterrupt

    from scanssc_ros.malloc_tuning import tune_malloc

    tune_malloc()  # before rclpy starts threads: they and the inference worker then share glibc's tuned arena
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
        node = ScanSSCNode()
        starting[0] = False
    except KeyboardInterrupt:
        print("[scanssc_node] interrupted during start-up", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 0
    except ParameterError as exc:
        print(f"[scanssc_node] invalid parameters: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 2
    except StartupError as exc:
        print(f"[scanssc_node] cannot start: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        t0 = time.monotonic()
        node.get_logger().info("shutting down")
        finished = node.close(timeout=0.3)
        t1 = time.monotonic()
        executor.remove_node(node)
        node.destroy_node()
        t2 = time.monotonic()
        rclpy.try_shutdown()
        t3 = time.monotonic()
        print(f"[scanssc_node] stopped in {t3 - t0:.2f} s (worker {t1 - t0:.2f}, node {t2 - t1:.2f}, "
              f"rclpy {t3 - t2:.2f})" + ("" if finished else "; an inference was still running: not waiting for it"),
              file=sys.stderr, flush=True)
    if not finished:
        # the worker is inside an inference: do not wait for it (nor for the interpreter to tear down torch
        # under it); everything the node owns is already closed
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def run_executable(argv: Optional[List[str]] = None) -> None:
    """The process entry point: :func:`main`, then exit without the interpreter's teardown. Everything the node
    owns is closed by then; what is left is unloading torch and the ROS libraries, which took about 0.5 s here
    and several seconds on slow machines, after the node has already left the graph."""
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
