package nsredge.core

import org.json.JSONObject
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertSame
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/**
 * Hard-routed orchestration against decisions recorded from the real ExecuTorch runtime: a replay engine returns, for
 * each call, the routing logits recorded for that tile (everything else: opaque values whose identity is checked,
 * and the stand-in output for the stage that writes `output`).
 */
class ReplayEngine(private val plan: DispatchPlan, private val routes: JSONObject, private val scale: Int) : TileEngine {
    var tile = 0
    var call = 0
    val called = ArrayList<String>()
    private val produced = HashMap<String, Tensor>()

    override val methods: Set<String> get() = plan.stages.flatMap { it.methods }.toSet()
    override fun inputShape(method: String): IntArray? = null

    override fun execute(method: String, inputs: List<Tensor>): List<Tensor> {
        val st = plan.stages.first { method in it.methods }
        if (st === plan.stages[0]) {
            produced.clear()
            produced["tile"] = inputs[0]
        }
        for ((i, n) in st.inputs.withIndex()) assertSame("$method input $n", produced[n], inputs[i])
        val rec = routes.getJSONArray("tiles").getJSONObject(tile).getJSONArray("calls").getJSONObject(call)
        assertEquals("tile $tile call $call", rec.getString("method"), method)
        called.add(method)
        val logits = rec.getJSONObject("logits")
        val outs = st.outputs.map { n ->
            when {
                logits.has(n) -> {
                    val a = logits.getJSONArray(n)
                    Tensor(intArrayOf(1, a.length()), FloatArray(a.length()) { a.getDouble(it).toFloat() })
                }
                n == "output" -> StandInEngine.standIn(inputs[st.inputs.indexOf("tile")], scale)
                else -> Tensor(intArrayOf(1), floatArrayOf(call.toFloat()))
            }
        }
        for ((i, n) in st.outputs.withIndex()) produced[n] = outs[i]
        call++
        if (call == plan.stages.size) {
            call = 0
            tile++
        }
        return outs
    }
}

class DispatchTest {
    private val case = "dispatch_rgb_37x29"
    private val card = Vectors.card("dispatch_fp32")
    private val routes = JSONObject(Vectors.text("cases/$case/routes.json"))

    @Test fun routesAsTheRealRuntimeAndStitchesTheStandInOutput() {
        val engine = ReplayEngine(card.dispatch!!, routes, card.scale)
        val runner = TiledRunner(card, engine)
        assertEquals(Layout.NHWC, runner.layout)
        val out = runner.run(Vectors.image(Vectors.case(case).getString("image")))
        val tiles = routes.getJSONArray("tiles")
        assertEquals(tiles.length(), runner.lastRoutes.size)
        for (i in 0 until tiles.length()) {
            val want = tiles.getJSONObject(i).getJSONArray("banks")
            assertEquals("tile $i", (0 until want.length()).map { want.getInt(it) }, runner.lastRoutes[i])
        }
        assertTrue("both banks chosen somewhere", runner.lastRoutes.flatten().toSet() == setOf(0, 1))
        assertEquals(tiles.length() * card.dispatch.stages.size, engine.called.size)
        assertArrayEquals(Vectors.floats("cases/$case/output.f32"), out.data, 1e-6f)
    }

    @Test fun argmaxTakesTheFirstOnTiesAndRefusesNaN() {
        assertEquals(0, argmaxFirst(floatArrayOf(1f, 1f), "t"))
        assertEquals(1, argmaxFirst(floatArrayOf(-2f, 3f, 3f), "t"))
        assertEquals(2, argmaxFirst(floatArrayOf(-2f, -1f, 0f), "t"))
        try {
            argmaxFirst(floatArrayOf(0f, Float.NaN), "stage s")
            fail("NaN routed")
        } catch (e: SrCoreException) {
            assertEquals(ErrorCode.BAD_OUTPUT, e.code)
            assertTrue(e.message!!.contains("stage s"))
        }
    }

    private fun constantEngine(names: Set<String>, logits: FloatArray) = object : TileEngine {
        override val methods = names
        override fun inputShape(method: String): IntArray? = null
        override fun execute(method: String, inputs: List<Tensor>): List<Tensor> {
            val st = card.dispatch!!.stages.first { method in it.methods }
            return st.outputs.map { n ->
                if (n == "logits") Tensor(intArrayOf(1, logits.size), logits)
                else StandInEngine.standIn(inputs[0], if (n == "output") card.scale else 1)
            }
        }
    }

    @Test fun tiedLogitsPickBankZero() {
        val all = card.dispatch!!.stages.flatMap { it.methods }.toSet()
        val runner = TiledRunner(card, constantEngine(all, floatArrayOf(0.25f, 0.25f)))
        runner.run(FloatImage(3, 5, 5, FloatArray(75)))
        assertTrue(runner.lastRoutes.flatten().all { it == 0 })
    }

    @Test fun refusesAProgramWithoutThePlansMethods() {
        val all = card.dispatch!!.stages.flatMap { it.methods }.toSet()
        try {
            TiledRunner(card, constantEngine(all - "b0_c0_k1", floatArrayOf(0f, 1f)))
            fail("missing method accepted")
        } catch (e: SrCoreException) {
            assertEquals(ErrorCode.DISPATCH, e.code)
            assertTrue(e.message, e.message!!.contains("'b0_c0_k1'"))
        }
    }

    @Test fun refusesWrongLogitCountsAndNaN() {
        val all = card.dispatch!!.stages.flatMap { it.methods }.toSet()
        for ((logits, code) in listOf(floatArrayOf(0f, 1f, 2f) to ErrorCode.DISPATCH, floatArrayOf(Float.NaN, 0f) to ErrorCode.BAD_OUTPUT)) {
            try {
                TiledRunner(card, constantEngine(all, logits)).run(FloatImage(3, 5, 5, FloatArray(75)))
                fail("bad logits accepted")
            } catch (e: SrCoreException) {
                assertEquals(code, e.code)
            }
        }
    }
}
