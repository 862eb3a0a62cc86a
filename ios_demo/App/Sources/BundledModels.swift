import CoreML
import CryptoKit
import Foundation
import SRCore

/// A model folder bundled with the app (`nsr-edge export-app-assets` writes `Resources/<model>_<variant>/`).
struct BundledModel: Identifiable, Hashable {
    let folder: URL
    let card: ModelCard?
    let error: String?
    var id: String { folder.lastPathComponent }
    var label: String { card?.title ?? "\(id) (refused: \(error ?? "?"))" }
    static func == (a: BundledModel, b: BundledModel) -> Bool { a.id == b.id }
    func hash(into h: inout Hasher) { h.combine(id) }
}

enum BundledModels {
    /// Every folder under the bundle's Resources/ holding a model.json, parsed and checked by SRCore.
    static func list(in bundle: Bundle = .main) -> [BundledModel] {
        guard let root = bundle.url(forResource: "Resources", withExtension: nil) ?? bundle.resourceURL,
              let entries = try? FileManager.default.contentsOfDirectory(at: root, includingPropertiesForKeys: nil)
        else { return [] }
        return entries.sorted { $0.lastPathComponent < $1.lastPathComponent }.compactMap { dir in
            let cardURL = dir.appendingPathComponent("model.json")
            guard let data = try? Data(contentsOf: cardURL) else { return nil }
            do {
                let card = try ModelCard.parse(data)
                _ = try card.artifactName { FileManager.default.fileExists(atPath: dir.appendingPathComponent($0).path) }
                guard card.runner == "coreml", card.artifact.kind == "directory" else {
                    return BundledModel(folder: dir, card: nil, error: "runner \(card.runner): this app runs Core ML packages")
                }
                return BundledModel(folder: dir, card: card, error: nil)
            } catch {
                return BundledModel(folder: dir, card: nil, error: "\(error)")
            }
        }
    }

    /// The compiled model (`.mlmodelc`) of a bundled `.mlpackage`: `MLModel.compileModel(at:)` once, then kept in
    /// Application Support under the card's artifact digest.
    static func compiled(_ model: BundledModel) async throws -> URL {
        guard let card = model.card else { throw SRCoreError(code: .badCard, message: model.error ?? "no card") }
        let fm = FileManager.default
        let cache = try fm.url(for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
            .appendingPathComponent("models/\(model.id)-\(card.artifact.sha256.prefix(16)).mlmodelc")
        if fm.fileExists(atPath: cache.path) { return cache }
        let package = model.folder.appendingPathComponent(card.artifact.file)
        let temp = try await MLModel.compileModel(at: package)
        try fm.createDirectory(at: cache.deletingLastPathComponent(), withIntermediateDirectories: true)
        try? fm.removeItem(at: cache)
        try fm.moveItem(at: temp, to: cache)
        return cache
    }

    /// The card's digest of a directory artifact: SHA-256 of its `sha256sum`-style manifest (docs/model_card.md).
    static func manifestDigest(of dir: URL) throws -> String {
        let fm = FileManager.default
        var entries: [(String, String)] = []
        let files = fm.enumerator(at: dir, includingPropertiesForKeys: [.isRegularFileKey])?.compactMap { $0 as? URL } ?? []
        for f in files where (try? f.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true {
            let rel = String(f.standardizedFileURL.path.dropFirst(dir.standardizedFileURL.path.count + 1))
            let hex = SHA256.hash(data: try Data(contentsOf: f)).map { String(format: "%02x", $0) }.joined()
            entries.append((rel, hex))
        }
        let manifest = entries.sorted { $0.0 < $1.0 }.map { "\($0.1)  \($0.0)\n" }.joined()
        return SHA256.hash(data: Data(manifest.utf8)).map { String(format: "%02x", $0) }.joined()
    }
}
