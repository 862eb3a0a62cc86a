package nsredge.core

/** Memory order of a 4-d tensor whose logical shape is always NCHW. */
enum class Layout {
    NCHW,
    /** Channels last (`NHWC` in the card's `io`, `channels_last` in `target_extra.dispatch`). */
    NHWC;

    companion object {
        fun parse(text: String, where: String): Layout = when (text) {
            "NCHW", "contiguous" -> NCHW
            "NHWC", "channels_last" -> NHWC
            else -> fail(ErrorCode.BAD_CARD, "$where: unknown layout '$text' (NCHW, NHWC or channels_last)")
        }
    }
}

/**
 * A dense float32 tensor: [shape] is the logical NCHW shape (batch 1 for tiles), [data] holds the values in
 * [layout] memory order. Engines receive and return these; the core converts layouts where the card says so.
 */
class Tensor(val shape: IntArray, val data: FloatArray, val layout: Layout = Layout.NCHW) {
    init {
        var n = 1
        for (d in shape) n *= d
        require(n == data.size) { "tensor of shape ${shape.joinToString("x")} needs $n values, got ${data.size}" }
    }

    /** The same values in NCHW memory order (a 4-d tensor; a copy only when the layout differs). */
    fun toNchw(): Tensor {
        if (layout == Layout.NCHW) return this
        val c = shape[1]
        val h = shape[2]
        val w = shape[3]
        val out = FloatArray(data.size)
        for (y in 0 until h) for (x in 0 until w) for (k in 0 until c) {
            out[(k * h + y) * w + x] = data[(y * w + x) * c + k]
        }
        return Tensor(shape, out, Layout.NCHW)
    }

    fun shapeText(): String = shape.joinToString("x")
}

/** A CHW float image (values 8-bit pixel / 255 for the image the model sees). */
class FloatImage(val channels: Int, val height: Int, val width: Int, val data: FloatArray) {
    init {
        if (channels < 1 || height < 1 || width < 1) {
            fail(ErrorCode.BAD_IMAGE, "empty image ${channels}x${height}x$width (channels x height x width)")
        }
        if (data.size != channels * height * width) {
            fail(ErrorCode.BAD_IMAGE, "image ${channels}x${height}x$width needs ${channels * height * width} " +
                "values, got ${data.size}")
        }
    }

    operator fun get(c: Int, y: Int, x: Int): Float = data[(c * height + y) * width + x]

    companion object {
        /**
         * From interleaved 8-bit pixels (`RGB`, `RGBA` or gray, row-major, [stride] values per pixel): the first
         * [channels] of each pixel, divided by 255 (as nsr-edge's Python side: uint8 -> float32 / 255).
         */
        fun fromInterleaved8(pixels: ByteArray, height: Int, width: Int, stride: Int, channels: Int): FloatImage {
            if (height < 1 || width < 1) fail(ErrorCode.BAD_IMAGE, "empty image ${height}x$width")
            if (channels > stride) fail(ErrorCode.BAD_IMAGE, "$channels channels from $stride values per pixel")
            if (pixels.size != height * width * stride) {
                fail(ErrorCode.BAD_IMAGE, "${height}x$width pixels of $stride bytes need ${height * width * stride} " +
                    "bytes, got ${pixels.size}")
            }
            val out = FloatArray(channels * height * width)
            for (y in 0 until height) for (x in 0 until width) for (c in 0 until channels) {
                val v = pixels[(y * width + x) * stride + c].toInt() and 0xFF
                out[(c * height + y) * width + x] = v.toFloat() / 255f
            }
            return FloatImage(channels, height, width, out)
        }

        /**
         * The input of a gray model from an RGB(A) photo: BT.601 luma Y = 16 + 65.481 R + 128.553 G + 24.966 B
         * (R, G, B in [0, 1]) rounded to 8 bits, / 255 (nsr-edge's `rgb_to_y8`, as MATLAB's `rgb2ycbcr`).
         */
        fun lumaOf(pixels: ByteArray, height: Int, width: Int, stride: Int): FloatImage {
            if (stride < 3) fail(ErrorCode.BAD_IMAGE, "luma needs RGB pixels, got $stride values per pixel")
            if (height < 1 || width < 1 || pixels.size != height * width * stride) {
                fail(ErrorCode.BAD_IMAGE, "${height}x$width pixels of $stride bytes need ${height * width * stride} " +
                    "bytes, got ${pixels.size}")
            }
            val out = FloatArray(height * width)
            val n = height * width
            for (i in 0 until n) {
                val r = (pixels[i * stride].toInt() and 0xFF).toDouble()
                val g = (pixels[i * stride + 1].toInt() and 0xFF).toDouble()
                val b = (pixels[i * stride + 2].toInt() and 0xFF).toDouble()
                val y = 16.0 + r * (65.481 / 255.0) + g * (128.553 / 255.0) + b * (24.966 / 255.0)
                out[i] = Math.floor(Math.min(255.0, Math.max(0.0, y)) + 0.5).toFloat() / 255f
            }
            return FloatImage(1, height, width, out)
        }
    }

    /** 8-bit interleaved pixels of this image: clip to [0, 1], * 255, round half up (what an app shows). */
    fun toInterleaved8(): ByteArray {
        val out = ByteArray(channels * height * width)
        for (y in 0 until height) for (x in 0 until width) for (c in 0 until channels) {
            val v = Math.min(1f, Math.max(0f, this[c, y, x]))
            out[(y * width + x) * channels + c] = Math.floor(v * 255.0 + 0.5).toInt().toByte()
        }
        return out
    }
}
