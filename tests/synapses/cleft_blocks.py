"""Tables of the cleft_fragments stage computed block by block in memory, for checks that blocks add up."""

from connectome.core.geometry import Box, Context
from connectome.synapses.fragments import fragment_table, label_block


def block_sums(seg, raw, prob, block, voxel_size, reach, columns) -> dict:
    """Per (post, candidate): the rows `columns(table, raw, seg, prob, read_box)` gives for each block's
    fragment table (clefts: prob >= 0.5; no partner directions), summed over the blocks of `block` shape;
    each block reads `reach` voxels of context."""
    volume = Box.from_shape(seg.shape)
    out: dict = {}
    index = 0
    for z in range(0, seg.shape[0], block[0]):
        for y in range(0, seg.shape[1], block[1]):
            for x in range(0, seg.shape[2], block[2]):
                write = Box.of((z, y, x), block)
                read = Context(reach, reach).read_box(write, volume)
                sl = tuple(slice(o, e) for o, e in zip(read.offset, read.end))
                wsl = tuple(slice(o, e) for o, e in zip(write.offset, write.end))
                frag = label_block(prob[wsl], 0.5, index)
                t = fragment_table(frag, prob[wsl], None, seg[sl], read, write, volume, 80.0, voxel_size, raw[sl])
                for post, cand, row in zip(t["iface_post"], t["iface_cand"], columns(t, raw[sl], seg[sl], prob[sl], read)):
                    key = (int(post), int(cand))
                    out[key] = out.get(key, 0) + row
                index += 1
    return out
