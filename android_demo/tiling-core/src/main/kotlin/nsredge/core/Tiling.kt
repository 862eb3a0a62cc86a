package nsredge.core

/**
 * The card's tiling contract (`tile` in model.json), all sizes in input pixels. The geometry is nsr-edge's
 * `runtime/tiling.py` with `edge_strips` false (every deploy card): tiles at 0, stride, 2*stride, ... plus one
 * flush with the end of the padded axis; an axis no longer than tile - 2*pad gets one tile reaching past the image.
 */
class TileSpec(val tile: Int, val pad: Int, val stride: Int, val padMode: String = "reflect") {
    /** Side of the kept part of a tile. */
    val core: Int get() = tile - 2 * pad

    init {
        if (tile < 1 || pad < 0) fail(ErrorCode.BAD_CARD, "tile: need tile >= 1 and pad >= 0 (tile $tile, pad $pad)")
        if (core < 1) fail(ErrorCode.BAD_CARD, "tile: tile $tile leaves no core after a $pad px margin on each side")
        if (stride < 1 || stride > core) {
            fail(ErrorCode.BAD_CARD, "tile: stride must be in 1..$core (tile - 2*pad) or cores leave gaps, got $stride")
        }
        if (padMode !in PAD_MODES) {
            fail(ErrorCode.BAD_CARD, "tile: pad_mode must be one of ${PAD_MODES.joinToString()}, got '$padMode'")
        }
    }

    companion object {
        val PAD_MODES = listOf("reflect", "symmetric", "edge")
    }
}

/** One tile: where it is read from (may reach into the padding) and the image region its core writes. */
data class TilePlacement(
    val y: Int, val x: Int, val height: Int, val width: Int,
    val coreY: Int, val coreX: Int, val coreH: Int, val coreW: Int,
    val weight: Double
)

/** Tile positions along one axis of length [n] (padded offsets) and the core length. */
private class Axis(val starts: List<Int>, val core: Int)

private fun axis(n: Int, spec: TileSpec): Axis {
    val length = n + 2 * spec.pad
    if (length <= spec.tile) return Axis(listOf(0), n)  // one core holds the axis; padding fills the tile
    val starts = ArrayList<Int>()
    var p = 0
    while (p < length - spec.tile) {
        starts.add(p)
        p += spec.stride
    }
    starts.add(length - spec.tile)  // the last tile is flush with the end of the padded axis
    return Axis(starts, spec.core)
}

/** Every tile of a [height] x [width] image, row-major (the order of `runtime/tiling.py`'s `plan_tiles`). */
fun planTiles(height: Int, width: Int, spec: TileSpec): List<TilePlacement> {
    if (height < 1 || width < 1) fail(ErrorCode.BAD_IMAGE, "plan: empty image ${height}x$width")
    val ay = axis(height, spec)
    val ax = axis(width, spec)
    val out = ArrayList<TilePlacement>(ay.starts.size * ax.starts.size)
    for (py in ay.starts) for (px in ax.starts) {
        out.add(TilePlacement(py - spec.pad, px - spec.pad, spec.tile, spec.tile, py, px, ay.core, ax.core, 1.0))
    }
    return out
}

/**
 * Source index of every padded position along one axis: padded index i (0 until before + n + after) reads image
 * index map[i]. "reflect" (mirror without repeating the edge) needs before, after <= n - 1: on a shorter axis it
 * falls back to "symmetric" (edge repeated), exactly as `runtime/tiling.py`; "symmetric" folds again and again
 * when the padding is longer than the axis (numpy's rule); "edge" repeats the border pixel.
 */
fun padIndexMap(n: Int, before: Int, after: Int, padMode: String): IntArray {
    var mode = padMode
    if (mode == "reflect" && Math.max(before, after) > n - 1) mode = "symmetric"
    val map = IntArray(before + n + after)
    for (i in map.indices) {
        val j = i - before
        map[i] = when {
            j in 0 until n -> j
            mode == "edge" -> if (j < 0) 0 else n - 1
            mode == "reflect" -> if (j < 0) -j else 2 * (n - 1) - j
            else -> {  // symmetric: period 2n
                val m = ((j % (2 * n)) + 2 * n) % (2 * n)
                if (m < n) m else 2 * n - 1 - m
            }
        }
    }
    return map
}

/**
 * The image as the tiles see it: padded (virtually, through index maps) so that every tile of [plan] lies inside.
 * [tile] packs one tile as a batch-1 tensor in the layout the artifact takes.
 */
class TilePacker(private val image: FloatImage, private val plan: List<TilePlacement>, padMode: String) {
    private val top = Math.max(0, -plan.map { it.y }.min()!!)
    private val left = Math.max(0, -plan.map { it.x }.min()!!)
    private val rows = padIndexMap(image.height, top, Math.max(0, plan.map { it.y + it.height }.max()!! - image.height), padMode)
    private val cols = padIndexMap(image.width, left, Math.max(0, plan.map { it.x + it.width }.max()!! - image.width), padMode)

    fun tile(t: TilePlacement, layout: Layout): Tensor {
        val c = image.channels
        val h = t.height
        val w = t.width
        val out = FloatArray(c * h * w)
        for (k in 0 until c) for (y in 0 until h) {
            val sy = rows[t.y + top + y]
            for (x in 0 until w) {
                val v = image[k, sy, cols[t.x + left + x]]
                if (layout == Layout.NCHW) out[(k * h + y) * w + x] = v else out[(y * w + x) * c + k] = v
            }
        }
        return Tensor(intArrayOf(1, c, h, w), out, layout)
    }
}

/** Int8/uint8 quantization of an engine input (a card's `scale` and `zero_point`, e.g. a LiteRT int8 input). */
class QuantParams(val dtype: String, val scale: Double, val zeroPoint: Int) {
    init {
        if (dtype != "int8" && dtype != "uint8") fail(ErrorCode.BAD_CARD, "quantized input dtype '$dtype' (int8 or uint8)")
        if (!(scale > 0.0) || scale.isInfinite()) fail(ErrorCode.BAD_CARD, "quantized input needs a scale > 0, got $scale")
    }

    /**
     * q = clamp(round(x / scale) + zero_point) with x / scale in float32 and rounding half away from zero (TFLite's
     * reference quantize); the bytes hold int8 values, or uint8 values for dtype uint8.
     */
    fun quantize(values: FloatArray): ByteArray {
        val lo = if (dtype == "int8") -128 else 0
        val hi = if (dtype == "int8") 127 else 255
        val s = scale.toFloat()
        val out = ByteArray(values.size)
        for (i in values.indices) {
            val v = values[i] / s
            val r = if (v >= 0f) Math.floor(v + 0.5) else -Math.floor(-v + 0.5)
            val q = Math.min(hi.toDouble(), Math.max(lo.toDouble(), r + zeroPoint)).toInt()
            out[i] = q.toByte()
        }
        return out
    }

    fun dequantize(q: ByteArray): FloatArray {
        val s = scale.toFloat()
        return FloatArray(q.size) { i ->
            val v = if (dtype == "int8") q[i].toInt() else q[i].toInt() and 0xFF
            (v - zeroPoint) * s
        }
    }
}

/**
 * Blends model outputs back into one image: of each output tile the core is kept (pad * scale dropped on every
 * side), overlapping cores are averaged with the tiles' weights. Accumulates in float32 in plan order, as
 * `runtime/tiling.py`, so a port gives the same floats.
 */
class Stitcher(private val plan: List<TilePlacement>, private val scale: Int, private val channels: Int) {
    val height: Int = plan.map { it.coreY + it.coreH }.max()!!
    val width: Int = plan.map { it.coreX + it.coreW }.max()!!
    private val acc = FloatArray(channels * height * scale * width * scale)
    private var added = 0

    /** Adds the output of the next tile of the plan, [out] in NCHW memory order ([1, C, T*s, T*s]). */
    fun add(out: Tensor) {
        if (added >= plan.size) fail(ErrorCode.BAD_OUTPUT, "got more outputs than the ${plan.size} tiles of the plan")
        val t = plan[added]
        val s = scale
        val th = t.height * s
        val tw = t.width * s
        val want = intArrayOf(1, channels, th, tw)
        if (!out.shape.contentEquals(want)) {
            fail(ErrorCode.BAD_OUTPUT, "tile ${added + 1} of ${plan.size}: the engine returned ${out.shapeText()}; " +
                "expected ${want.joinToString("x")} ($channels channels, tile ${t.height} at scale $s)")
        }
        val src = out.toNchw().data
        val oy = (t.coreY - t.y) * s
        val ox = (t.coreX - t.x) * s
        val oh = height * s
        val ow = width * s
        val wgt = t.weight.toFloat()
        for (c in 0 until channels) for (y in 0 until t.coreH * s) {
            val dst = (c * oh + t.coreY * s + y) * ow + t.coreX * s
            val from = (c * th + oy + y) * tw + ox
            for (x in 0 until t.coreW * s) acc[dst + x] += wgt * src[from + x]
        }
        added++
    }

    /** The blended image (C x H*s x W*s) once every tile is in. */
    fun result(): FloatImage {
        if (added != plan.size) fail(ErrorCode.BAD_OUTPUT, "got outputs for $added of ${plan.size} tiles")
        val weights = DoubleArray(height * width)
        for (t in plan) for (y in t.coreY until t.coreY + t.coreH) for (x in t.coreX until t.coreX + t.coreW) {
            weights[y * width + x] += t.weight
        }
        val oh = height * scale
        val ow = width * scale
        val out = FloatArray(acc.size)
        for (c in 0 until channels) for (y in 0 until oh) for (x in 0 until ow) {
            val i = (c * oh + y) * ow + x
            out[i] = acc[i] / weights[(y / scale) * width + x / scale].toFloat()
        }
        return FloatImage(channels, oh, ow, out)
    }
}
