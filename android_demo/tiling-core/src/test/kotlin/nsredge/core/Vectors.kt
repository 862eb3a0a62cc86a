package nsredge.core

import org.json.JSONArray
import org.json.JSONObject
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** The shared test vectors (android_demo/testdata, written by `python -m nsr_edge.app_vectors`). */
object Vectors {
    val dir: File = File(System.getProperty("nsredge.testdata") ?: "../testdata")
    val index: JSONObject by lazy { JSONObject(text("vectors.json")) }

    fun text(rel: String): String = File(dir, rel).readText()
    fun bytes(rel: String): ByteArray = File(dir, rel).readBytes()

    fun floats(rel: String): FloatArray {
        val b = ByteBuffer.wrap(bytes(rel)).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
        val out = FloatArray(b.remaining())
        b.get(out)
        return out
    }

    fun cardNames(): List<String> = index.getJSONObject("cards").keys().asSequence().toList().sorted()
    fun cardText(name: String): String = text(index.getJSONObject("cards").getString(name))
    fun card(name: String): ModelCard = ModelCard.parse(cardText(name))
    fun caseNames(): List<String> = index.getJSONObject("cases").keys().asSequence().toList().sorted()
    fun case(name: String): JSONObject = index.getJSONObject("cases").getJSONObject(name)

    fun image(name: String): FloatImage {
        val m = index.getJSONObject("images").getJSONObject(name)
        val c = m.getInt("channels")
        return FloatImage.fromInterleaved8(bytes(m.getString("file")), m.getInt("height"), m.getInt("width"), c, c)
    }

    fun plan(case: String): List<TilePlacement> {
        val a = JSONArray(text("cases/$case/plan.json"))
        return (0 until a.length()).map {
            val r = a.getJSONArray(it)
            TilePlacement(r.getInt(0), r.getInt(1), r.getInt(2), r.getInt(3), r.getInt(4), r.getInt(5), r.getInt(6),
                          r.getInt(7), r.getDouble(8))
        }
    }

    fun strings(a: JSONArray): List<String> = (0 until a.length()).map { a.getString(it) }
}

/** The stand-in engine of the vectors: nearest-neighbour upscale plus half the tile's top-left value. */
class StandInEngine(private val scale: Int, private val method: String = "forward") : TileEngine {
    val calls = ArrayList<String>()
    override val methods: Set<String> get() = setOf(method)
    override fun inputShape(method: String): IntArray? = null

    override fun execute(method: String, inputs: List<Tensor>): List<Tensor> {
        calls.add(method)
        return listOf(standIn(inputs[0], scale))
    }

    companion object {
        /** [tile] in its own layout -> output in the same layout. */
        fun standIn(tile: Tensor, s: Int): Tensor {
            val c = tile.shape[1]
            val h = tile.shape[2]
            val w = tile.shape[3]
            val nchw = tile.layout == Layout.NCHW
            fun at(k: Int, y: Int, x: Int): Float = if (nchw) tile.data[(k * h + y) * w + x] else tile.data[(y * w + x) * c + k]
            val oh = h * s
            val ow = w * s
            val out = FloatArray(c * oh * ow)
            for (k in 0 until c) {
                val corner = 0.5f * at(k, 0, 0)
                for (y in 0 until oh) for (x in 0 until ow) {
                    val v = at(k, y / s, x / s) + corner
                    if (nchw) out[(k * oh + y) * ow + x] = v else out[(y * ow + x) * c + k] = v
                }
            }
            return Tensor(intArrayOf(1, c, oh, ow), out, tile.layout)
        }
    }
}
