package nsredge.core

/**
 * A loaded artifact, as the core sees it: named methods that take and return float32 tensors. One class per
 * runtime implements it in the app (ExecuTorch `Module`, LiteRT `Interpreter`, Core ML `MLModel`); tests use
 * stand-ins. A single-tile artifact has `forward`; a hard-routed one has the methods of its dispatch plan.
 */
interface TileEngine {
    /** The methods the artifact has (empty: the engine cannot list them; calls then fail in [execute]). */
    val methods: Set<String>

    /** The NCHW input shape of [method]'s first input, or null when the engine cannot tell before a call. */
    fun inputShape(method: String): IntArray?

    /** Runs [method] on [inputs]; the outputs in the memory order the artifact writes (the card's layout). */
    fun execute(method: String, inputs: List<Tensor>): List<Tensor>
}

/**
 * First index of the largest value (numpy's argmax, the card's "first index on ties"); a NaN or infinite logit is an
 * error, never a silent choice.
 */
fun argmaxFirst(logits: FloatArray, where: String): Int {
    if (logits.isEmpty()) fail(ErrorCode.BAD_OUTPUT, "$where: empty routing logits")
    var best = 0
    for (i in logits.indices) {
        if (logits[i].isNaN() || logits[i].isInfinite()) {
            fail(ErrorCode.BAD_OUTPUT, "$where: routing logit $i is ${logits[i]}; the artifact produced non-finite values")
        }
        if (logits[i] > logits[best]) best = i
    }
    return best
}

/**
 * Runs one tile through a hard-routed artifact by its card's plan (`target_extra.dispatch`, docs/model_card.md):
 * the environment starts with `tile`; each stage calls the method of the bank its route's logits pick (argmax, first
 * on ties) or its only method, and stores the outputs under their names; the result is `output`.
 */
class Dispatcher(private val plan: DispatchPlan, private val engine: TileEngine) {
    init {
        val have = engine.methods
        if (have.isNotEmpty()) {
            for (st in plan.stages) for (m in st.methods) {
                if (m !in have) fail(ErrorCode.DISPATCH, "the card's dispatch plan calls method '$m' (stage ${st.name}), " +
                    "which the program lacks: artifact and card are from different conversions")
            }
        }
        if (plan.stages.none { "output" in it.outputs }) fail(ErrorCode.DISPATCH, "no stage of the dispatch plan writes 'output'")
    }

    /** The output tile; [routes] (optional) receives the bank chosen at each routed stage. */
    fun run(tile: Tensor, routes: MutableList<Int>? = null): Tensor {
        val env = HashMap<String, Tensor>()
        env["tile"] = tile
        for (st in plan.stages) {
            var bank = 0
            if (st.methods.size > 1) {
                val logits = env[st.route] ?: fail(ErrorCode.DISPATCH, "stage ${st.name} routes on '${st.route}', " +
                    "which no earlier stage wrote")
                if (logits.data.size != st.methods.size) {
                    fail(ErrorCode.DISPATCH, "stage ${st.name}: ${logits.data.size} routing logits for ${st.methods.size} banks")
                }
                bank = argmaxFirst(logits.data, "stage ${st.name}")
                routes?.add(bank)
            }
            val args = st.inputs.map { n ->
                env[n] ?: fail(ErrorCode.DISPATCH, "stage ${st.name} takes '$n', which no earlier stage wrote")
            }
            val outs = engine.execute(st.methods[bank], args)
            if (outs.size != st.outputs.size) {
                fail(ErrorCode.BAD_OUTPUT, "method ${st.methods[bank]} returned ${outs.size} values; the plan names " +
                    "${st.outputs.size} (${st.outputs.joinToString()})")
            }
            for (i in outs.indices) env[st.outputs[i]] = outs[i]
        }
        return env["output"] ?: fail(ErrorCode.DISPATCH, "the dispatch plan ended without 'output'")
    }
}

/** Latency of one image: per tile and in all (milliseconds), for the on-screen readout. */
class RunStats(val tiles: Int, val totalMs: Double, val engineMs: Double) {
    val msPerTile: Double get() = if (tiles == 0) 0.0 else engineMs / tiles
}

/**
 * The whole tiled inference of one image by its card: check the image, plan the tiles, pack each one in the layout
 * the artifact takes, run it (one `forward` call, or the dispatch plan), stitch the cores. [tile] picks an extra
 * tile size of the artifact (`forward_<t>x<t>`); null: the card's tile.
 */
class TiledRunner(val card: ModelCard, private val engine: TileEngine, tile: Int? = null) {
    val method: MethodSpec = card.methodForTile(tile)
    val spec: TileSpec = card.tileSpecFor(method)
    private val dispatcher: Dispatcher? = card.dispatch?.let { Dispatcher(it, engine) }
    /** Memory order of the tile handed to the engine: the dispatch plan's layout, else the card's input layout. */
    val layout: Layout = card.dispatch?.layout ?: card.input.layout
    var lastRoutes: List<List<Int>> = emptyList()
        private set
    var lastStats: RunStats = RunStats(0, 0.0, 0.0)
        private set

    init {
        if (dispatcher == null) {
            if (engine.methods.isNotEmpty() && method.name !in engine.methods) {
                fail(ErrorCode.TILE_NOT_ACCEPTED, "the engine has no method '${method.name}' (it has " +
                    "${engine.methods.sorted().joinToString()})")
            }
            val shape = engine.inputShape(method.name)
            if (shape != null && !shape.contentEquals(method.inputShape)) {
                fail(ErrorCode.TILE_NOT_ACCEPTED, "the engine takes ${shape.joinToString("x")} in '${method.name}'; " +
                    "the card's tile needs ${method.inputShape.joinToString("x")}: artifact and card do not match")
            }
        }
    }

    fun run(image: FloatImage, progress: ((Int, Int) -> Unit)? = null): FloatImage {
        if (image.channels != card.channels) {
            val how = if (card.channels == 1) "feed the luma (FloatImage.lumaOf) and put the chroma back"
                      else "replicate the gray channel to RGB"
            fail(ErrorCode.CHANNEL_MISMATCH, "the model takes ${card.channels}-channel images, got ${image.channels} ($how)")
        }
        val t0 = System.nanoTime()
        val plan = planTiles(image.height, image.width, spec)
        val packer = TilePacker(image, plan, spec.padMode)
        val stitcher = Stitcher(plan, card.scale, card.channels)
        val routes = ArrayList<List<Int>>()
        var engineNs = 0L
        for ((i, t) in plan.withIndex()) {
            val x = packer.tile(t, layout)
            val e0 = System.nanoTime()
            val y = if (dispatcher != null) {
                val r = ArrayList<Int>()
                val out = dispatcher.run(x, r)
                routes.add(r)
                out
            } else {
                val outs = engine.execute(method.name, listOf(x))
                if (outs.size != 1) fail(ErrorCode.BAD_OUTPUT, "method ${method.name} returned ${outs.size} outputs, expected 1")
                outs[0]
            }
            engineNs += System.nanoTime() - e0
            stitcher.add(y)
            progress?.invoke(i + 1, plan.size)
        }
        val result = stitcher.result()
        lastRoutes = routes
        lastStats = RunStats(plan.size, (System.nanoTime() - t0) / 1e6, engineNs / 1e6)
        return result
    }
}
