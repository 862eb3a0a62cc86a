package nsredge.core

import org.json.JSONArray
import org.json.JSONException
import org.json.JSONObject

/** `io.inputs[0]` / `io.outputs[0]`: the tensor of the `forward` method. */
class TensorSpec(val name: String, val layout: Layout, val dtype: String, val shape: IntArray)

/** An entry point: `forward` at the card's tile, `forward_<h>x<w>` per extra tile. */
class MethodSpec(val name: String, val inputShape: IntArray, val outputShape: IntArray)

/** The artifact file (or `.mlpackage` folder) inside the card's folder. */
class ArtifactRef(val file: String, val kind: String, val sha256: String)

/** One stage of a hard-routed artifact: k methods chosen by the argmax of [route], or one method. */
class DispatchStage(val name: String, val methods: List<String>, val inputs: List<String>, val outputs: List<String>,
                    val route: String?)

/** `target_extra.dispatch`: the host-side orchestration of a multi-method program. */
class DispatchPlan(val layout: Layout, val stages: List<DispatchStage>)

/**
 * What an app reads of a model card (docs/model_card.md); everything else is ignored, as a newer minor may add
 * fields. Read with [ModelCard.parse]; every refusal is a [SrCoreException] naming the field.
 */
class ModelCard(
    val version: String,
    val modelId: String,
    val taskName: String,
    val scale: Int,
    val channels: Int,
    val runner: String,
    val artifact: ArtifactRef,
    val recipeName: String,
    val tileSpec: TileSpec,
    val input: TensorSpec,
    val output: TensorSpec,
    val methods: List<MethodSpec>,
    val dispatch: DispatchPlan?,
    /** Per method, the quantization of the engine's input where the card gives one (LiteRT int8 inputs). */
    val inputQuant: Map<String, QuantParams>
) {
    /** The method whose input tile is [tile] (null: the card's own tile, `forward`). */
    fun methodForTile(tile: Int?): MethodSpec {
        if (tile == null) return methods[0]
        for (m in methods) if (m.inputShape[2] == tile && m.inputShape[3] == tile) return m
        val have = methods.joinToString { "${it.inputShape[2]}x${it.inputShape[3]}" }
        fail(ErrorCode.TILE_NOT_ACCEPTED, "the artifact has no method for tile $tile (it has $have)")
    }

    /** The tile spec for [method] (the card's geometry at that method's tile; stride keeps the card's overlap). */
    fun tileSpecFor(method: MethodSpec): TileSpec {
        val t = method.inputShape[3]
        if (t == tileSpec.tile) return tileSpec
        val overlap = tileSpec.core - tileSpec.stride
        return TileSpec(t, tileSpec.pad, t - 2 * tileSpec.pad - overlap, tileSpec.padMode)
    }

    /** "nsr_sr_x2 int8-ptq (executorch)": a label for the UI. */
    val title: String get() = "$modelId $recipeName ($runner)"

    /**
     * The artifact's name, checked: a plain name (never a path) that [exists] in the card's folder (or assets).
     * [exists] is the platform's check, e.g. `{ File(dir, it).exists() }` or a lookup in `assets.list(dir)`.
     */
    fun artifactName(exists: (String) -> Boolean): String {
        val f = artifact.file
        if (f.length == 0 || f == "." || f == ".." || f.contains('/') || f.contains('\\')) {
            fail(ErrorCode.MISSING_ARTIFACT, "model card names an artifact outside its folder: '$f'")
        }
        if (!exists(f)) {
            fail(ErrorCode.MISSING_ARTIFACT, "the artifact named by the model card, $f, is missing (copy it next " +
                "to model.json; artifact and card come from the same `nsr-edge convert --out` folder)")
        }
        return f
    }

    companion object {
        const val SCHEMA = "nsr-edge-model-card"
        const val MAJOR = 2

        /** Parses model.json text; [read] (optional) collects the path of every field read (tests). */
        fun parse(text: String, read: MutableSet<String>? = null): ModelCard {
            val root = try {
                JSONObject(text)
            } catch (e: JSONException) {
                fail(ErrorCode.BAD_CARD, "model card is not a JSON object (${e.message})")
            }
            return CardReader(read ?: HashSet()).card(root)
        }
    }
}

/** Typed reading with one-line errors (`model card field tile.pad: expected integer, got "4"`). */
private class CardReader(val read: MutableSet<String>) {

    fun card(root: JSONObject): ModelCard {
        val schema = root.opt("schema")
        read.add("schema")
        if (schema != ModelCard.SCHEMA) {
            fail(ErrorCode.BAD_CARD, "not an nsr-edge model card (schema ${show(schema)})")
        }
        read.add("version")
        val version = root.opt("version")
        val major = majorOf(version) ?: fail(ErrorCode.UNSUPPORTED_VERSION, "model card version ${show(version)} is " +
            "not MAJOR.MINOR (written by an older nsr-edge; convert again)")
        if (major != ModelCard.MAJOR) {
            val fix = if (major > ModelCard.MAJOR) "update the app" else "convert again"
            fail(ErrorCode.UNSUPPORTED_VERSION, "model card version $version is not supported: this app reads " +
                "${ModelCard.MAJOR}.x ($fix)")
        }
        val model = obj(root, "model", "model")
        val scale = int(model, "scale", "model.scale")
        val channels = int(model, "channels", "model.channels")
        if (scale < 1) fail(ErrorCode.BAD_CARD, "model card field model.scale: must be >= 1, got $scale")
        if (channels != 1 && channels != 3) fail(ErrorCode.BAD_CARD, "model card field model.channels: 1 or 3, got $channels")
        val art = obj(root, "artifact", "artifact")
        val artifact = ArtifactRef(str(art, "file", "artifact.file"), optStr(art, "kind", "artifact.kind") ?: "file",
                                   str(art, "sha256", "artifact.sha256"))
        val spec = tileSpec(obj(root, "tile", "tile"))
        val io = obj(root, "io", "io")
        val input = tensor(first(arr(io, "inputs", "io.inputs"), "io.inputs"), "io.inputs[]")
        val output = tensor(first(arr(io, "outputs", "io.outputs"), "io.outputs"), "io.outputs[]")
        val methodsJson = arr(root, "methods", "methods")
        val methods = (0 until methodsJson.length()).map { method(objAt(methodsJson, it, "methods[$it]")) }
        if (methods.isEmpty() || methods[0].name != "forward") {
            fail(ErrorCode.BAD_CARD, "model card field methods: the first method must be 'forward'")
        }
        val fwdIn = intArrayOf(1, channels, spec.tile, spec.tile)
        val fwdOut = intArrayOf(1, channels, spec.tile * scale, spec.tile * scale)
        if (!methods[0].inputShape.contentEquals(fwdIn) || !methods[0].outputShape.contentEquals(fwdOut)) {
            fail(ErrorCode.BAD_CARD, "model card method forward takes ${methods[0].inputShape.joinToString("x")} -> " +
                "${methods[0].outputShape.joinToString("x")}; the card's tile, channels and scale say " +
                "${fwdIn.joinToString("x")} -> ${fwdOut.joinToString("x")}")
        }
        for (m in methods) {
            val ok = m.inputShape.size == 4 && m.inputShape[0] == 1 && m.inputShape[1] == channels &&
                m.inputShape[2] == m.inputShape[3] && m.inputShape[2] - 2 * spec.pad >= 1
            if (!ok) fail(ErrorCode.BAD_CARD, "model card method ${m.name}: input ${m.inputShape.joinToString("x")} " +
                "is not a square [1, $channels, T, T] tile larger than the margins")
        }
        val extra = optObj(root, "target_extra", "target_extra")
        val dispatch = extra?.let { e -> optObj(e, "dispatch", "target_extra.dispatch")?.let { dispatch(it) } }
        if (str(root, "runner", "runner") == "dispatch" && dispatch == null) {
            fail(ErrorCode.BAD_CARD, "model card of runner dispatch has no target_extra.dispatch plan")
        }
        val quant = HashMap<String, QuantParams>()
        val litert = extra?.let { optObj(it, "litert", "target_extra.litert") }
        val litertMethods = litert?.let { optObj(it, "methods", "target_extra.litert.methods") }
        if (litertMethods != null) {
            for (name in litertMethods.keys()) {
                val m = obj(litertMethods, name, "target_extra.litert.methods{}")
                val ins = arr(m, "inputs", "target_extra.litert.methods{}.inputs")
                val d = first(ins, "target_extra.litert.methods.$name.inputs")
                val p = "target_extra.litert.methods{}.inputs[]"
                val dtype = str(d, "dtype", "$p.dtype")
                val qScale = dbl(d, "scale", "$p.scale")
                val zeroPoint = int(d, "zero_point", "$p.zero_point")
                if (dtype == "int8" || dtype == "uint8") quant[name] = QuantParams(dtype, qScale, zeroPoint)
            }
        }
        if (input.dtype != "float32" && quant["forward"] == null) {
            fail(ErrorCode.BAD_CARD, "model card input dtype ${input.dtype} without a scale and zero point for it")
        }
        return ModelCard(version as String, str(model, "id", "model.id"),
                         str(obj(model, "task", "model.task"), "name", "model.task.name"), scale, channels,
                         str(root, "runner", "runner"), artifact,
                         str(obj(root, "recipe", "recipe"), "name", "recipe.name"), spec, input, output, methods,
                         dispatch, quant)
    }

    fun tileSpec(t: JSONObject): TileSpec {
        val strips = bool(t, "edge_strips", "tile.edge_strips")
        val whole = int(t, "whole_below", "tile.whole_below")
        if (strips || whole != 0) {
            fail(ErrorCode.BAD_CARD, "model card tile: edge_strips=$strips, whole_below=$whole is the reference " +
                "evaluation layout; an app needs fixed tiles (edge_strips false, whole_below 0: every `convert` card)")
        }
        return TileSpec(int(t, "tile", "tile.tile"), int(t, "pad", "tile.pad"), int(t, "stride", "tile.stride"),
                        str(t, "pad_mode", "tile.pad_mode"))
    }

    fun tensor(o: JSONObject, p: String): TensorSpec {
        val dtype = str(o, "dtype", "$p.dtype")
        if (dtype !in listOf("float32", "float16", "int8", "uint8")) {
            fail(ErrorCode.BAD_CARD, "model card field $p.dtype: unknown dtype '$dtype'")
        }
        arr(o, "range", "$p.range")
        return TensorSpec(str(o, "name", "$p.name"), Layout.parse(str(o, "layout", "$p.layout"), "$p.layout"), dtype,
                          ints(arr(o, "shape", "$p.shape"), "$p.shape"))
    }

    fun method(o: JSONObject): MethodSpec {
        val name = str(o, "name", "methods[].name")
        val input = ints(arr(o, "input_shape", "methods[].input_shape"), "methods[].input_shape")
        val output = ints(arr(o, "output_shape", "methods[].output_shape"), "methods[].output_shape")
        if (input.size != 4 || output.size != 4) fail(ErrorCode.BAD_CARD, "model card method $name: shapes must be NCHW")
        return MethodSpec(name, input, output)
    }

    fun dispatch(d: JSONObject): DispatchPlan {
        val p = "target_extra.dispatch"
        val layout = Layout.parse(str(d, "layout", "$p.layout"), "$p.layout")
        val js = arr(d, "stages", "$p.stages")
        val stages = (0 until js.length()).map { i ->
            val s = objAt(js, i, "$p.stages[$i]")
            val sp = "$p.stages[]"
            val stage = DispatchStage(str(s, "name", "$sp.name"), strs(arr(s, "methods", "$sp.methods"), "$sp.methods"),
                                      strs(arr(s, "inputs", "$sp.inputs"), "$sp.inputs"),
                                      strs(arr(s, "outputs", "$sp.outputs"), "$sp.outputs"),
                                      optStr(s, "route", "$sp.route"))
            if (stage.methods.isEmpty()) fail(ErrorCode.BAD_CARD, "$p: stage ${stage.name} has no method")
            if (stage.methods.size > 1 && stage.route == null) {
                fail(ErrorCode.BAD_CARD, "$p: stage ${stage.name} has ${stage.methods.size} methods but no route")
            }
            stage
        }
        if (stages.isEmpty()) fail(ErrorCode.BAD_CARD, "$p: no stages")
        return DispatchPlan(layout, stages)
    }

    // ------------------------------------------------------------------------------------------- typed accessors

    private fun value(o: JSONObject, key: String, path: String): Any {
        read.add(path)
        if (!o.has(key) || o.isNull(key)) fail(ErrorCode.BAD_CARD, "model card field $path is missing")
        return o.get(key)
    }

    private fun wrong(path: String, want: String, got: Any?): Nothing =
        fail(ErrorCode.BAD_CARD, "model card field $path: expected $want, got ${show(got)}")

    fun obj(o: JSONObject, key: String, path: String): JSONObject =
        value(o, key, path) as? JSONObject ?: wrong(path, "an object", o.opt(key))

    fun optObj(o: JSONObject, key: String, path: String): JSONObject? {
        read.add("$path?")
        if (!o.has(key) || o.isNull(key)) return null
        return o.get(key) as? JSONObject ?: wrong(path, "an object", o.opt(key))
    }

    fun arr(o: JSONObject, key: String, path: String): JSONArray =
        value(o, key, path) as? JSONArray ?: wrong(path, "a list", o.opt(key))

    fun str(o: JSONObject, key: String, path: String): String =
        value(o, key, path) as? String ?: wrong(path, "a string", o.opt(key))

    fun optStr(o: JSONObject, key: String, path: String): String? {
        read.add("$path?")
        if (!o.has(key) || o.isNull(key)) return null
        return o.get(key) as? String ?: wrong(path, "a string", o.opt(key))
    }

    fun bool(o: JSONObject, key: String, path: String): Boolean =
        value(o, key, path) as? Boolean ?: wrong(path, "a boolean", o.opt(key))

    fun int(o: JSONObject, key: String, path: String): Int = asInt(value(o, key, path)) ?: wrong(path, "an integer", o.opt(key))

    fun dbl(o: JSONObject, key: String, path: String): Double {
        val v = value(o, key, path)
        return if (v is Number && v !is Boolean) v.toDouble() else wrong(path, "a number", v)
    }

    fun first(a: JSONArray, path: String): JSONObject {
        if (a.length() < 1) fail(ErrorCode.BAD_CARD, "model card field $path is empty")
        return objAt(a, 0, "$path[0]")
    }

    fun objAt(a: JSONArray, i: Int, path: String): JSONObject = a.opt(i) as? JSONObject ?: wrong(path, "an object", a.opt(i))

    fun ints(a: JSONArray, path: String): IntArray =
        IntArray(a.length()) { asInt(a.opt(it)) ?: wrong("$path[$it]", "an integer", a.opt(it)) }

    fun strs(a: JSONArray, path: String): List<String> =
        (0 until a.length()).map { a.opt(it) as? String ?: wrong("$path[$it]", "a string", a.opt(it)) }

    private fun asInt(v: Any?): Int? = when (v) {
        is Int -> v
        is Long -> if (v >= Int.MIN_VALUE && v <= Int.MAX_VALUE) v.toInt() else null
        else -> null
    }

    private fun majorOf(version: Any?): Int? {
        if (version !is String) return null
        val parts = version.split(".")
        if (parts.size != 2 || parts.any { it.length == 0 || !it.all { ch -> ch in '0'..'9' } }) return null
        return parts[0].toIntOrNull()
    }

    private fun show(v: Any?): String = when (v) {
        null, JSONObject.NULL -> "null"
        is String -> "'$v'"
        else -> v.toString().take(40)
    }
}
