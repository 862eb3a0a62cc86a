import CoreML
import Foundation
import SRCore

/// A Core ML model behind SRCore's TileEngine: `forward` takes the card's `io.inputs[0]` ([1, C, T, T] float32,
/// NCHW) and returns `io.outputs[0]` ([1, C, T*s, T*s]). Compute units are chosen by the user (the card's
/// `target_extra.coreml.compute_units_recommendation` is the default).
final class CoreMLEngine: TileEngine {
    let model: MLModel
    let card: ModelCard
    let computeUnits: MLComputeUnits
    var methods: Set<String> { ["forward"] }

    init(compiledModel url: URL, card: ModelCard, computeUnits: MLComputeUnits) throws {
        let config = MLModelConfiguration()
        config.computeUnits = computeUnits
        model = try MLModel(contentsOf: url, configuration: config)
        self.card = card
        self.computeUnits = computeUnits
        guard model.modelDescription.inputDescriptionsByName[card.input.name] != nil,
              model.modelDescription.outputDescriptionsByName[card.output.name] != nil else {
            throw SRCoreError(code: .missingArtifact, message: "the Core ML model has no input '\(card.input.name)' " +
                              "or output '\(card.output.name)' named by the card: artifact and card do not match")
        }
    }

    func inputShape(_ method: String) -> [Int]? {
        model.modelDescription.inputDescriptionsByName[card.input.name]?.multiArrayConstraint?.shape.map { $0.intValue }
    }

    func execute(_ method: String, _ inputs: [Tensor]) throws -> [Tensor] {
        guard method == "forward", inputs.count == 1 else {
            throw SRCoreError(code: .tileNotAccepted, message: "Core ML model runs 'forward' on one tile, got \(method)")
        }
        let x = inputs[0]
        let array = try MLMultiArray(shape: x.shape.map { NSNumber(value: $0) }, dataType: .float32)
        array.withUnsafeMutableBufferPointer(ofType: Float.self) { ptr, strides in
            // a fresh MLMultiArray is dense, row-major: the tile's NCHW order
            _ = x.data.withUnsafeBufferPointer { src in memcpy(ptr.baseAddress!, src.baseAddress!, src.count * 4) }
        }
        let features = try MLDictionaryFeatureProvider(dictionary: [card.input.name: MLFeatureValue(multiArray: array)])
        let out = try model.prediction(from: features)
        guard let y = out.featureValue(for: card.output.name)?.multiArrayValue else {
            throw SRCoreError(code: .badOutput, message: "Core ML returned no '\(card.output.name)' array")
        }
        return [Tensor(shape: y.shape.map { $0.intValue }, data: Self.denseFloats(y), layout: .nchw)]
    }

    /// The values in row-major order whatever the array's strides and type (Core ML may pad rows or return fp16).
    static func denseFloats(_ y: MLMultiArray) -> [Float] {
        let shape = y.shape.map { $0.intValue }, strides = y.strides.map { $0.intValue }
        let n = shape.reduce(1, *)
        var out = [Float](repeating: 0, count: n)
        var index = [Int](repeating: 0, count: shape.count)
        for i in 0..<n {
            var rem = i, offset = 0
            for d in stride(from: shape.count - 1, through: 0, by: -1) {
                index[d] = rem % shape[d]; rem /= shape[d]
                offset += index[d] * strides[d]
            }
            out[i] = y[offset].floatValue
        }
        return out
    }
}

extension MLComputeUnits {
    static let choices: [(String, MLComputeUnits)] = [("CPU", .cpuOnly), ("CPU+GPU", .cpuAndGPU),
                                                       ("CPU+ANE", .cpuAndNeuralEngine), ("All", .all)]
    var label: String { Self.choices.first { $0.1 == self }?.0 ?? "?" }
}
