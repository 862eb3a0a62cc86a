package dev.nsredge.demo

import android.content.Context
import android.content.res.AssetManager
import java.io.File
import java.security.MessageDigest
import nsredge.core.ErrorCode
import nsredge.core.ModelCard
import nsredge.core.SrCoreException

/**
 * A model folder in the APK's assets, as `nsr-edge export-app-assets` writes it (`<model>_<variant>/` holding the
 * artifact and its card `model.json`); [card] is null and [error] says why when the card was refused.
 */
class AssetModel(val folder: String, val card: ModelCard?, val error: String?) {
    val label: String get() = card?.title ?: "$folder (refused: $error)"
}

/** Finds the bundled models and copies one out of the APK into files/ (ExecuTorch and LiteRT load from a path). */
object AssetModels {
    const val CARD = "model.json"

    /** Every asset folder holding a model card, parsed by the tiling core (major version, fields, artifact name). */
    fun list(context: Context): List<AssetModel> {
        val assets = context.assets
        return (assets.list("") ?: emptyArray()).sorted().mapNotNull { folder ->
            val names = assets.list(folder)?.toSet() ?: return@mapNotNull null
            if (CARD !in names) return@mapNotNull null
            try {
                val card = ModelCard.parse(assets.open("$folder/$CARD").bufferedReader().use { it.readText() })
                card.artifactName { it in names }
                AssetModel(folder, card, null)
            } catch (e: SrCoreException) {
                AssetModel(folder, null, "${e.code}: ${e.message}")
            }
        }
    }

    /**
     * The model's folder under files/models/, with the artifact (a file, or a directory such as an `.mlpackage`),
     * the per-tile files of LiteRT/ONNX cards (`model_<method>.tflite`) and the card. Copied once per card
     * digest; a file artifact is checked against the card's SHA-256 after the copy.
     */
    fun materialize(context: Context, model: AssetModel): File {
        val card = model.card ?: throw SrCoreException(ErrorCode.BAD_CARD, model.error ?: "no card")
        val dir = File(context.filesDir, "models/${model.folder}")
        val stamp = File(dir, ".sha256")
        if (stamp.isFile && stamp.readText() == card.artifact.sha256) return dir
        dir.deleteRecursively()
        dir.mkdirs()
        val assets = context.assets
        val names = assets.list(model.folder)?.toList() ?: emptyList()
        val wanted = names.filter { it == card.artifact.file || it == CARD || it.startsWith("model_") }
        for (name in wanted) copy(assets, "${model.folder}/$name", File(dir, name))
        if (card.artifact.kind == "file") {
            val got = sha256(File(dir, card.artifact.file))
            if (got != card.artifact.sha256) {
                dir.deleteRecursively()
                throw SrCoreException(ErrorCode.MISSING_ARTIFACT, "${model.folder}/${card.artifact.file}: SHA-256 " +
                    "$got differs from the card's ${card.artifact.sha256} (artifact and card from different exports)")
            }
        }
        stamp.writeText(card.artifact.sha256)
        return dir
    }

    private fun copy(assets: AssetManager, path: String, to: File) {
        val children = assets.list(path)
        if (children != null && children.isNotEmpty()) {  // a directory (e.g. a Core ML package)
            to.mkdirs()
            for (c in children) copy(assets, "$path/$c", File(to, c))
            return
        }
        assets.open(path).use { input -> to.outputStream().use { input.copyTo(it) } }
    }

    fun sha256(file: File): String {
        val md = MessageDigest.getInstance("SHA-256")
        file.inputStream().use { s ->
            val buf = ByteArray(1 shl 16)
            while (true) {
                val n = s.read(buf)
                if (n < 0) break
                md.update(buf, 0, n)
            }
        }
        return md.digest().joinToString("") { "%02x".format(it) }
    }
}
