"""The synapse chain's stages: clefts -> cleft_fragments -> synapses.

- `clefts`: the cleft network, resident on each worker, predicts a cleft probability and a partner
  direction per voxel; blocks read mirrored context padded to the network's divisor (seam-free).
- `cleft_fragments`: per block, thresholded clefts cut into 6-connected fragments (global ids; with a
  core threshold, each cut into its cores and the rest, so that a cleft of two densities can split),
  with their statistics, face voxels, partner votes (the segment under each cleft voxel is the
  postsynaptic vote, the segment its direction points into the presynaptic vote) and the interface
  sums of the partner classifier (image shells around the cleft per nearby segment; interface.py).
- `synapses`: a global step joins fragments across faces (union-find) into cleft objects (one per
  core where an object holds several large cores), one synapse per (object, postsynaptic segment),
  its presynaptic segment chosen by the partner classifier (or, without one, one per (post, pre)
  pair of the direction votes), and writes the synapse table (`OUT/synapses.csv`); its blocks write
  the synapse ids (`synapse_labels`).
"""

from __future__ import annotations

import os
from functools import cached_property

import numpy as np
from pydantic import Field

from connectome.affinity.blank import FILL_BLANK, fingerprint_fill, read_network_input, with_fill_margin
from connectome.affinity.masking import MASK_DTYPES
from connectome.core.geometry import Block, Context, Vec, vec3
from connectome.engine.registry import register
from connectome.engine.stage import IMAGE, BlockStage, Input, Output, OutputSpec, StageParams, Table
from connectome.io import Volume, VolumeMeta, open_volume
from connectome.io.tables import save_table
from connectome.models.context import unet_context
from connectome.models.registry import DEVICE_PATTERN
from connectome.models.voxel_size import check_voxel_size, within_tolerance
from connectome.synapses import model as M
from connectome.synapses import partner_network as PN
from connectome.synapses.fragments import FRAGMENTS_FORMAT, fragment_table, label_block, partners_at, vector_reach
from connectome.synapses.interface import DEFAULT_CLASSIFIER, LINEAR_CLASSIFIER, load_classifier, sample_reach
from connectome.synapses.merge import SynapseStep, label_voxels, load_lookup
from connectome.synapses.partner_network import DEFAULT_NETWORK

DEFAULT_MODEL = "cleft-synthetic"


class CleftsParams(StageParams):
    model: str = Field(DEFAULT_MODEL, description="shipped cleft model name or path to a .pt file")
    device: str | None = Field(None, pattern=DEVICE_PATTERN,
                                description="cpu, cuda, cuda:N; default: the worker's GPU if any")
    allow_voxel_mismatch: bool = Field(False, description="run the model on data of another voxel size")
    guards = ("allow_voxel_mismatch",)
    fill_blank: int = Field(FILL_BLANK, ge=0, le=16, description="the network reads a blank voxel with tissue within "
                            "this many sections above and below it as the image interpolated between the two (a "
                            "missing section as the blend of its neighbours: left black, the clefts beside it "
                            "fade); 0: as black (affinity.blank)")


@register
class CleftsStage(BlockStage[CleftsParams]):
    name = "clefts"
    Params = CleftsParams
    inputs = (Input("raw", dtypes=("uint8",), channels=1, description=IMAGE),)
    outputs = (Output("cleft_probability", OutputSpec(dtype="uint8")),
               Output("partner_vectors", OutputSpec(dtype="uint8", channels=3)))
    resources = {"GPU": 1}

    @cached_property
    def info(self) -> M.CleftModelInfo:
        return M.read_info(self.params.model)

    def context(self) -> Context:
        """The network's context and the margin that filling its input's blank voxels reads (`fill_margin`)."""
        return with_fill_margin(unet_context(self.info.context, self.info.divisor), self.params.fill_blank)

    def fingerprint(self) -> dict:
        """With `fill_blank` only where something is filled: a run from before the option resumes with 0."""
        return fingerprint_fill(super().fingerprint(), self.params.fill_blank)

    def block_multiple(self) -> Vec:
        return vec3(self.info.divisor)

    def block_multiple_reason(self) -> str:
        return f"the downsampling factor of cleft model {self.params.model}"

    def weight_files(self) -> dict[str, tuple[str, str]]:
        return {"weights": ("model", self.info.path)}

    def check_inputs(self, inputs: dict[str, VolumeMeta]) -> None:
        super().check_inputs(inputs)
        data_nm = inputs["raw"].voxel_size
        hint = None
        if not self.params.allow_voxel_mismatch and not within_tolerance(data_nm, self.info.voxel_size):
            fitting = [n for n in M.available() if n != self.params.model
                       and within_tolerance(data_nm, M.read_info(n).voxel_size)]  # read only to say so
            named = [f"{n} (synthetic data only)" if "synthetic" in n else n for n in fitting]
            hint = (f"give --cleft-model (reconstruct) or --model (synapses) {' or '.join(named)}, shipped for that "
                    "voxel size, or pass --allow-voxel-mismatch") if fitting else None
        check_voxel_size(self.params.model, self.info.voxel_size, self.input_addresses["raw"], data_nm,
                         self.params.allow_voxel_mismatch, **({"hint": hint} if hint else {}))

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        model = M.get(self.params.model, self.params.device)
        raw, net = read_network_input(volumes["raw"], block.read_box, self.params.fill_blank)
        prob, vec = M.predict(model, raw)
        inner = block.write_box.relative_to(net)
        volumes["cleft_probability"].write(block.write_box, M.probability_as_uint8(prob[inner]))
        volumes["partner_vectors"].write(block.write_box, M.vectors_as_uint8(vec[(slice(None), *inner)]))
        return {}


class CleftFragmentsParams(StageParams):
    model: str = Field(DEFAULT_MODEL, description="the cleft model (its threshold and direction length)")
    threshold: float | None = Field(None, gt=0, lt=1, description="cleft probability; default: the model's")
    core_threshold: float | None = Field(None, gt=0, lt=1, description="probability of a density's core (cores "
                                         "split a cleft object into synapses); default: the model's, if any")
    partner_network: str | None = Field("auto", description="partner network scoring each cleft's presynaptic "
                                        "candidates (partner_network.py; shipped name or .json path; used by a "
                                        "classifier with a network, e.g. partners-synthetic-net); auto: the "
                                        "shipped one where the data has its voxel size; null: none")


@register
class CleftFragmentsStage(BlockStage[CleftFragmentsParams]):
    name = "cleft_fragments"
    Params = CleftFragmentsParams
    inputs = (Input("cleft_probability", dtypes=("uint8",)), Input("partner_vectors", dtypes=("uint8",), channels=3),
              Input("segmentation", dtypes=("uint64", "uint32")),
              Input("raw", dtypes=("uint8",), channels=1, description=IMAGE),
              Input("mask", dtypes=MASK_DTYPES, channels=1, optional=True,
                    description="voxels where it is nonzero hold no cleft (align's defects: margins, blank sections)"))
    outputs = (Output("cleft_fragments", OutputSpec(dtype="uint64")),)
    tables = (Table("cleft_fragments", FRAGMENTS_FORMAT),)

    @cached_property
    def info(self) -> M.CleftModelInfo:
        return M.read_info(self.params.model)

    def check_inputs(self, inputs: dict[str, VolumeMeta]) -> None:
        super().check_inputs(inputs)
        self._voxel_size = tuple(inputs["segmentation"].voxel_size)

    def check_upstream(self, upstream: dict[str, BlockStage | None]) -> CleftFragmentsParams:
        producer = upstream.get("cleft_probability")
        if isinstance(producer, CleftsStage):  # the model that made the probabilities
            return self.params.model_copy(update={"model": producer.params.model})
        return self.params

    @property
    def threshold(self) -> float:
        return self.params.threshold if self.params.threshold is not None else self.info.threshold

    @property
    def core_threshold(self) -> float | None:
        return self.params.core_threshold if self.params.core_threshold is not None else self.info.core_threshold

    @property
    def network(self) -> str | None:
        """The partner network that scores candidates, if any (`partner_network` for this voxel size)."""
        name = self.params.partner_network
        if name is None:
            return None
        voxel_size = getattr(self, "_voxel_size", None)
        if name == "auto":
            return DEFAULT_NETWORK if voxel_size is None or PN.read_info(DEFAULT_NETWORK).fits(voxel_size) else None
        info = PN.read_info(name)
        if voxel_size is not None and not info.fits(voxel_size):
            from connectome.core.errors import UserError

            raise UserError(f"partner_network {name!r}: trained at voxel size {list(info.voxel_size)} nm; the "
                            f"segmentation's is {list(voxel_size)} nm")
        return name

    def fingerprint_params(self) -> dict:
        return {**super().fingerprint_params(), "partner_network": self.network}

    def context(self) -> Context:
        voxel_size = getattr(self, "_voxel_size", self.info.voxel_size)
        half = PN.read_info(self.network).half if self.network else 0
        reach = vec3([max(a, b, half) for a, b in zip(vector_reach(self.info.vector_nm, voxel_size),
                                                        sample_reach(voxel_size))])
        return Context(reach, reach)

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        w = block.write_box
        prob = volumes["cleft_probability"].read(w)
        if "mask" in volumes:
            prob = np.where(volumes["mask"].read(w) != 0, np.uint8(0), prob)
        frag = label_block(prob, self.threshold, block.index, self.core_threshold)
        volumes["cleft_fragments"].write(w, frag)
        vectors = M.vectors_from_uint8(volumes["partner_vectors"].read(w)) if self.info.partners else None
        seg = volumes["segmentation"].read(block.read_box)
        raw = volumes["raw"].read(block.read_box)
        table = fragment_table(frag, prob, vectors, seg, block.read_box, w, volumes["segmentation"].box,
                               self.info.vector_nm, volumes["segmentation"].meta.voxel_size, raw, self.core_threshold)
        if self.network:
            scores = PN.network_sums(table, raw, seg, volumes["cleft_probability"].read(block.read_box),
                                     block.read_box, self.network)
            table["iface_stats"] = np.concatenate([table["iface_stats"], scores], 1)
        save_table(self.table_dirs["cleft_fragments"], block.index, **table)
        return {"fragments": int(len(table["ids"]))}


class SynapsesParams(StageParams):
    model: str = Field(DEFAULT_MODEL, description="the cleft model (its minimum cleft size)")
    min_voxels: int | None = Field(None, ge=1, description="smaller clefts are dropped; default: the model's")
    edge_min_voxels: int | None = Field(None, ge=1, description="the same for clefts cut by the volume's outer "
                                        "faces; default: the model's (else min_voxels)")
    core_min_voxels: int | None = Field(None, ge=1, description="a cleft with two or more cores (cleft_fragments' "
                                        "core_threshold) of this size is one synapse per core; default: the model's")
    satellite_nm: float | None = Field(None, gt=0, description="a synapse this near one over 1 / satellite_ratio "
                                       "times its size is a piece of that one's density; default: the model's")
    satellite_ratio: float | None = Field(None, gt=0, lt=1, description="see satellite_nm; default: the model's")
    vote_split_voxels: int | None = Field(None, ge=1, description="with a partner classifier: another presynaptic "
                                          "segment that this many of a synapse's voxels vote for is a synapse of "
                                          "its own (several boutons on one density); default: the model's")
    split_by_partners: bool = Field(True, description="one synapse per (post, pre) pair of a cleft's votes "
                                                       "(touching clefts of two synapses), not one per cleft")
    partner_classifier: str | None = Field(DEFAULT_CLASSIFIER, description="interface classifier choosing each "
                                           "synapse's presynaptic segment (shipped name or .json path); "
                                           "null: the majority of the direction votes")


@register
class SynapsesStage(BlockStage[SynapsesParams]):
    name = "synapses"
    Params = SynapsesParams
    inputs = (Input("cleft_fragments", dtypes=("uint64",)), Input("partner_vectors", dtypes=("uint8",), channels=3),
              Input("segmentation", dtypes=("uint64", "uint32")))
    outputs = (Output("synapse_labels", OutputSpec(dtype="uint64")),)
    reads_tables = (Table("cleft_fragments", FRAGMENTS_FORMAT),)

    def check_upstream(self, upstream: dict[str, BlockStage | None]) -> SynapsesParams:
        producer = upstream.get("cleft_fragments")
        if isinstance(producer, CleftFragmentsStage):
            name = self.params.partner_classifier
            update: dict = {"model": producer.params.model}
            if name and producer.network is None and load_classifier(name).network:
                if "partner_classifier" not in self.params.model_fields_set:  # the default: its linear part
                    update["partner_classifier"] = LINEAR_CLASSIFIER
                else:
                    from connectome.core.errors import UserError

                    raise UserError(f"synapses: partner_classifier {name!r} adds the partner network's scores, but "
                                    "cleft_fragments computes none (its partner_network is null, or auto at a voxel "
                                    "size the network was not trained for); set its partner_network to auto or a "
                                    f"network name, or use {LINEAR_CLASSIFIER!r}")
            return self.params.model_copy(update=update)
        return self.params

    def check_inputs(self, inputs: dict[str, VolumeMeta]) -> None:
        super().check_inputs(inputs)
        self._voxel_size = tuple(inputs["cleft_fragments"].voxel_size)

    @cached_property
    def info(self) -> M.CleftModelInfo:
        return M.read_info(self.params.model)

    def context(self) -> Context:
        reach = vector_reach(self.info.vector_nm, getattr(self, "_voxel_size", self.info.voxel_size))
        return Context(reach, reach)

    @cached_property
    def merge(self) -> SynapseStep:
        info = M.read_info(self.params.model)
        tables = self.table_dirs["cleft_fragments"]
        out_dir = os.path.dirname(os.path.dirname(os.path.abspath(tables)))
        voxel_size = (getattr(self, "_voxel_size", None)
                      or open_volume(self.input_addresses["cleft_fragments"]).meta.voxel_size)
        min_voxels = self.params.min_voxels if self.params.min_voxels is not None else info.min_voxels
        edge = self.params.edge_min_voxels if self.params.edge_min_voxels is not None else (
            info.edge_min_voxels if self.params.min_voxels is None else None)
        core = self.params.core_min_voxels if self.params.core_min_voxels is not None else info.core_min_voxels
        satellite = self.params.satellite_nm if self.params.satellite_nm is not None else info.satellite_nm
        ratio = self.params.satellite_ratio if self.params.satellite_ratio is not None else info.satellite_ratio
        split = self.params.vote_split_voxels if self.params.vote_split_voxels is not None else info.vote_split_voxels
        return SynapseStep(tables, out_dir, min_voxels, voxel_size, info.partners, self.params.split_by_partners,
                           self.params.partner_classifier, edge, core, satellite, ratio, split,
                           self.input_addresses.get("segmentation"))

    def global_step(self) -> SynapseStep:
        return self.merge

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "lut": os.path.basename(self.merge.lut)}

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        """Each cleft voxel's synapse, from its fragment's object and its partner votes (as voted)."""
        w = block.write_box
        frag = volumes["cleft_fragments"].read(w)
        nz = np.nonzero(frag)
        pos = np.stack(nz, axis=1).astype(np.int64) + np.asarray(w.offset)
        vectors = M.vectors_from_uint8(volumes["partner_vectors"].read(w)) if self.info.partners else None
        seg = volumes["segmentation"].read(block.read_box)
        post, pre = partners_at(pos, nz, vectors, seg, block.read_box, self.info.vector_nm,
                                volumes["segmentation"].meta.voxel_size)
        out = np.zeros(frag.shape, np.uint64)
        out[nz] = label_voxels(load_lookup(self.merge.lut), frag[nz], post, pre, self.info.partners)
        volumes["synapse_labels"].write(w, out)
        return {"synapses": int(np.unique(out[nz]).size)}
