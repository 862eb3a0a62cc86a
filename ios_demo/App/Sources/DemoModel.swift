import CoreGraphics
import CoreML
import Foundation
import Observation
import SRCore

/// The state SwiftUI shows (AVCam's pattern: an @Observable model on the main actor; capture and inference off it).
@MainActor @Observable
final class DemoModel {
    static let crop = 128  // input pixels of the centre crop; the restored crop is crop * scale on a side

    let camera: FrameSource
    var models: [BundledModel] = BundledModels.list()
    var selected: BundledModel? { didSet { reload() } }
    var computeUnits: MLComputeUnits = .cpuAndGPU { didSet { reload() } }
    private(set) var bicubic: CGImage?
    private(set) var restored: CGImage?
    private(set) var status = "starting"

    private let worker = Worker()

    init(camera: FrameSource) {
        self.camera = camera
        selected = models.first { $0.card != nil }
    }

    func start() async {
        reload()
        do {
            for await frame in try await camera.start() {
                let text: String
                do {
                    guard let r = try await worker.process(frame) else { continue }
                    bicubic = r.bicubic; restored = r.restored
                    text = r.text
                } catch {
                    text = "\(error)"
                }
                status = text
            }
        } catch {
            status = "\(error)"
        }
    }

    private func reload() {
        guard let model = selected else { status = "no Core ML model bundled: run nsr-edge export-app-assets (README)"; return }
        let units = computeUnits
        status = "loading \(model.label) on \(units.label)"
        Task {
            do {
                try await worker.load(model, units)
            } catch {
                status = "\(model.id): \(error)"
            }
        }
    }
}

/// Owns the engine and runner; one frame at a time, off the main actor.
actor Worker {
    struct Result: Sendable { let bicubic: CGImage?; let restored: CGImage?; let text: String }
    private var runner: TiledRunner?
    private var card: ModelCard?
    private var label = ""

    func load(_ model: BundledModel, _ units: MLComputeUnits) async throws {
        runner = nil
        guard let card = model.card else { throw SRCoreError(code: .badCard, message: model.error ?? "no card") }
        let url = try await BundledModels.compiled(model)
        let engine = try CoreMLEngine(compiledModel: url, card: card, computeUnits: units)
        runner = try TiledRunner(card: card, engine: engine)
        self.card = card
        label = "\(card.title), Core ML on \(units.label)"
    }

    func process(_ frame: CGImage) throws -> Result? {
        guard let runner, let card, let crop = RGBA(centerOf: frame, side: DemoModel.crop) else { return nil }
        let t0 = DispatchTime.now().uptimeNanoseconds
        let out = try runner.run(try crop.modelInput(channels: card.channels))
        let bicubic = crop.bicubic(scale: card.scale)
        let restored = RGBA.from(out, colour: bicubic)
        let ms = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
        let s = runner.lastStats
        let text = String(format: "%@\nframe %.1f ms (model %.1f ms), %d tiles of %d px, %.2f ms/tile", label, ms,
                          s.engineMs, s.tiles, card.tileSpec.tile, s.tiles == 0 ? 0 : s.engineMs / Double(s.tiles))
        return Result(bicubic: bicubic.cgImage, restored: restored.cgImage, text: text)
    }
}
