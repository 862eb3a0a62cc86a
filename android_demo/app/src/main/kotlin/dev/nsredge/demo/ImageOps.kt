package dev.nsredge.demo

import android.graphics.Bitmap
import android.graphics.Matrix
import nsredge.core.FloatImage

/** Bitmap <-> the core's FloatImage, the centre crop the model sees, and the bicubic upscale shown beside it. */
object ImageOps {

    /** The frame upright (CameraX reports how far the sensor image is rotated from the display). */
    fun rotate(src: Bitmap, degrees: Int): Bitmap {
        if (degrees % 360 == 0) return src
        val m = Matrix().apply { postRotate(degrees.toFloat()) }
        return Bitmap.createBitmap(src, 0, 0, src.width, src.height, m, true)
    }

    /** A [side] x [side] crop from the centre (smaller when the frame is). */
    fun centerCrop(src: Bitmap, side: Int): Bitmap {
        val s = minOf(side, src.width, src.height)
        return Bitmap.createBitmap(src, (src.width - s) / 2, (src.height - s) / 2, s, s)
    }

    /** Interleaved RGBA bytes of an ARGB_8888 bitmap (what `FloatImage.fromInterleaved8` and `lumaOf` take). */
    fun rgba(src: Bitmap): ByteArray {
        val px = IntArray(src.width * src.height)
        src.getPixels(px, 0, src.width, 0, 0, src.width, src.height)
        val out = ByteArray(px.size * 4)
        for (i in px.indices) {
            val p = px[i]
            out[4 * i] = (p shr 16).toByte()
            out[4 * i + 1] = (p shr 8).toByte()
            out[4 * i + 2] = p.toByte()
            out[4 * i + 3] = (p ushr 24).toByte()
        }
        return out
    }

    /** The model's input: RGB / 255, or the BT.601 luma for a gray model (docs/model_card.md, "Prepare the input"). */
    fun modelInput(src: Bitmap, channels: Int): FloatImage {
        val bytes = rgba(src)
        return if (channels == 1) FloatImage.lumaOf(bytes, src.height, src.width, 4)
        else FloatImage.fromInterleaved8(bytes, src.height, src.width, 4, 3)
    }

    /** An RGB model output as a bitmap (clipped, 8-bit, as the core rounds it). */
    fun toBitmap(img: FloatImage): Bitmap {
        val bytes = img.toInterleaved8()
        val c = img.channels
        val px = IntArray(img.height * img.width) { i ->
            val r = bytes[i * c].toInt() and 0xFF
            val g = bytes[i * c + (if (c == 3) 1 else 0)].toInt() and 0xFF
            val b = bytes[i * c + (if (c == 3) 2 else 0)].toInt() and 0xFF
            (0xFF shl 24) or (r shl 16) or (g shl 8) or b
        }
        return Bitmap.createBitmap(px, img.width, img.height, Bitmap.Config.ARGB_8888)
    }

    /**
     * A gray model's output put back into colour: the model's Y with the Cb/Cr of [colour] (the bicubic upscale of
     * the same crop), BT.601 studio range, as nsr-edge's Python side (`ycbcr` of MATLAB's `rgb2ycbcr`).
     */
    fun mergeLuma(y: FloatImage, colour: Bitmap): Bitmap {
        val w = y.width
        val h = y.height
        val px = IntArray(w * h)
        colour.getPixels(px, 0, w, 0, 0, w, h)
        for (i in px.indices) {
            val r = ((px[i] shr 16) and 0xFF) / 255.0
            val g = ((px[i] shr 8) and 0xFF) / 255.0
            val b = (px[i] and 0xFF) / 255.0
            val cb = 128.0 - 37.797 * r - 74.203 * g + 112.0 * b
            val cr = 128.0 + 112.0 * r - 93.786 * g - 18.214 * b
            val yy = Math.min(1.0, Math.max(0.0, y.data[i].toDouble())) * 255.0 - 16.0
            val rr = clamp8(1.164383 * yy + 1.596027 * (cr - 128.0))
            val gg = clamp8(1.164383 * yy - 0.391762 * (cb - 128.0) - 0.812968 * (cr - 128.0))
            val bb = clamp8(1.164383 * yy + 2.017232 * (cb - 128.0))
            px[i] = (0xFF shl 24) or (rr shl 16) or (gg shl 8) or bb
        }
        return Bitmap.createBitmap(px, w, h, Bitmap.Config.ARGB_8888)
    }

    private fun clamp8(v: Double): Int = Math.min(255.0, Math.max(0.0, Math.floor(v + 0.5))).toInt()

    /**
     * Bicubic upscale by an integer [scale] (Keys' kernel, a = -0.5, pixel-centre alignment and replicated edges:
     * MATLAB's `imresize` when enlarging, the baseline the model is compared with).
     */
    fun bicubic(src: Bitmap, scale: Int): Bitmap {
        if (scale == 1) return src.copy(Bitmap.Config.ARGB_8888, false)
        val w = src.width
        val h = src.height
        val inPx = IntArray(w * h)
        src.getPixels(inPx, 0, w, 0, 0, w, h)
        val ow = w * scale
        val oh = h * scale
        val xs = taps(w, scale)
        val ys = taps(h, scale)
        val out = IntArray(ow * oh)
        val acc = DoubleArray(3)
        for (oy in 0 until oh) {
            val ty = ys[oy]
            for (ox in 0 until ow) {
                val tx = xs[ox]
                acc.fill(0.0)
                for (j in 0 until 4) {
                    val row = ty.index[j] * w
                    for (i in 0 until 4) {
                        val wgt = ty.weight[j] * tx.weight[i]
                        val p = inPx[row + tx.index[i]]
                        acc[0] += wgt * ((p shr 16) and 0xFF)
                        acc[1] += wgt * ((p shr 8) and 0xFF)
                        acc[2] += wgt * (p and 0xFF)
                    }
                }
                out[oy * ow + ox] = (0xFF shl 24) or (clamp8(acc[0]) shl 16) or (clamp8(acc[1]) shl 8) or clamp8(acc[2])
            }
        }
        return Bitmap.createBitmap(out, ow, oh, Bitmap.Config.ARGB_8888)
    }

    private class Taps(val index: IntArray, val weight: DoubleArray)

    private fun taps(n: Int, scale: Int): Array<Taps> = Array(n * scale) { o ->
        val u = (o + 0.5) / scale - 0.5
        val left = Math.floor(u).toInt() - 1
        val idx = IntArray(4) { k -> Math.min(n - 1, Math.max(0, left + k)) }
        val wts = DoubleArray(4) { k -> cubic(u - (left + k)) }
        val sum = wts.sum()
        Taps(idx, DoubleArray(4) { wts[it] / sum })
    }

    private fun cubic(x: Double): Double {
        val a = Math.abs(x)
        return when {
            a <= 1.0 -> 1.5 * a * a * a - 2.5 * a * a + 1.0
            a < 2.0 -> -0.5 * a * a * a + 2.5 * a * a - 4.0 * a + 2.0
            else -> 0.0
        }
    }
}
