import Foundation

public struct TensorSpec: Sendable { public let name: String, layout: Layout, dtype: String, shape: [Int] }
public struct MethodSpec: Sendable { public let name: String, inputShape: [Int], outputShape: [Int] }
public struct ArtifactRef: Sendable { public let file: String, kind: String, sha256: String }
public struct DispatchStage: Sendable { public let name: String, methods: [String], inputs: [String], outputs: [String]; public let route: String? }
public struct DispatchPlan: Sendable { public let layout: Layout, stages: [DispatchStage] }

/// What an app reads of a model card (docs/model_card.md; the list: android_demo/testdata/app_fields.json).
public struct ModelCard: Sendable {
    public static let schema = "nsr-edge-model-card"
    public static let major = 2
    public let version: String, modelId: String, taskName: String, scale: Int, channels: Int, runner: String
    public let artifact: ArtifactRef, recipeName: String, tileSpec: TileSpec, input: TensorSpec, output: TensorSpec
    public let methods: [MethodSpec], dispatch: DispatchPlan?, inputQuant: [String: QuantParams]
    public var title: String { "\(modelId) \(recipeName) (\(runner))" }

    public func method(forTile tile: Int?) throws -> MethodSpec {
        guard let tile else { return methods[0] }
        if let m = methods.first(where: { $0.inputShape[2] == tile && $0.inputShape[3] == tile }) { return m }
        let have = methods.map { "\($0.inputShape[2])x\($0.inputShape[3])" }.joined(separator: ", ")
        throw fail(.tileNotAccepted, "the artifact has no method for tile \(tile) (it has \(have))")
    }

    public func tileSpec(for m: MethodSpec) throws -> TileSpec {
        let t = m.inputShape[3]
        if t == tileSpec.tile { return tileSpec }
        let overlap = tileSpec.core - tileSpec.stride
        return try TileSpec(tile: t, pad: tileSpec.pad, stride: t - 2 * tileSpec.pad - overlap, padMode: tileSpec.padMode)
    }

    /// The artifact's plain name, checked to exist (e.g. `Bundle.main.url(forResource:withExtension:) != nil`).
    public func artifactName(exists: (String) -> Bool) throws -> String {
        let f = artifact.file
        if f.isEmpty || f == "." || f == ".." || f.contains("/") || f.contains("\\") {
            throw fail(.missingArtifact, "model card names an artifact outside its folder: '\(f)'")
        }
        guard exists(f) else {
            throw fail(.missingArtifact, "the artifact named by the model card, \(f), is missing (copy it next to model.json)")
        }
        return f
    }

    public static func parse(_ data: Data) throws -> ModelCard {
        guard let root = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw fail(.badCard, "model card is not a JSON object")
        }
        return try CardReader().card(root)
    }
}

private struct CardReader {
    func value(_ o: [String: Any], _ key: String, _ path: String) throws -> Any {
        guard let v = o[key], !(v is NSNull) else { throw fail(.badCard, "model card field \(path) is missing") }
        return v
    }
    func wrong(_ path: String, _ want: String, _ got: Any?) -> SRCoreError {
        fail(.badCard, "model card field \(path): expected \(want), got \(got.map { "\($0)" } ?? "null")")
    }
    func obj(_ o: [String: Any], _ k: String, _ p: String) throws -> [String: Any] {
        let v = try value(o, k, p); guard let r = v as? [String: Any] else { throw wrong(p, "an object", v) }; return r
    }
    func optObj(_ o: [String: Any], _ k: String, _ p: String) throws -> [String: Any]? {
        guard let v = o[k], !(v is NSNull) else { return nil }
        guard let r = v as? [String: Any] else { throw wrong(p, "an object", v) }; return r
    }
    func arr(_ o: [String: Any], _ k: String, _ p: String) throws -> [Any] {
        let v = try value(o, k, p); guard let r = v as? [Any] else { throw wrong(p, "a list", v) }; return r
    }
    func str(_ o: [String: Any], _ k: String, _ p: String) throws -> String {
        let v = try value(o, k, p); guard let r = v as? String else { throw wrong(p, "a string", v) }; return r
    }
    func optStr(_ o: [String: Any], _ k: String, _ p: String) throws -> String? {
        guard let v = o[k], !(v is NSNull) else { return nil }
        guard let r = v as? String else { throw wrong(p, "a string", v) }; return r
    }
    /// JSON booleans and numbers both arrive as NSNumber on Apple platforms; tell them apart portably.
    func isBool(_ v: Any) -> Bool {
        #if canImport(Darwin)
        guard let n = v as? NSNumber else { return false }
        return CFGetTypeID(n) == CFBooleanGetTypeID()
        #else
        return type(of: v) == Bool.self
        #endif
    }
    /// An integer: a JSON number without a fraction, not a boolean.
    func asInt(_ v: Any) -> Int? {
        guard !isBool(v), let n = v as? NSNumber else { return nil }
        let d = n.doubleValue
        return d == d.rounded() && abs(d) < 1e9 && !"\(n)".contains(".") ? n.intValue : nil
    }
    func int(_ o: [String: Any], _ k: String, _ p: String) throws -> Int {
        let v = try value(o, k, p); guard let r = asInt(v) else { throw wrong(p, "an integer", v) }; return r
    }
    func dbl(_ o: [String: Any], _ k: String, _ p: String) throws -> Double {
        let v = try value(o, k, p); guard !isBool(v), let n = v as? NSNumber else { throw wrong(p, "a number", v) }; return n.doubleValue
    }
    func bool(_ o: [String: Any], _ k: String, _ p: String) throws -> Bool {
        let v = try value(o, k, p)
        guard isBool(v), let n = v as? NSNumber else { throw wrong(p, "a boolean", v) }
        return n.boolValue
    }
    func ints(_ a: [Any], _ p: String) throws -> [Int] { try a.enumerated().map { i, v in guard let r = asInt(v) else { throw wrong("\(p)[\(i)]", "an integer", v) }; return r } }
    func strs(_ a: [Any], _ p: String) throws -> [String] { try a.enumerated().map { i, v in guard let r = v as? String else { throw wrong("\(p)[\(i)]", "a string", v) }; return r } }
    func first(_ a: [Any], _ p: String) throws -> [String: Any] {
        guard let o = a.first as? [String: Any] else { throw fail(.badCard, "model card field \(p) is empty or not a list of objects") }
        return o
    }

    func card(_ root: [String: Any]) throws -> ModelCard {
        guard root["schema"] as? String == ModelCard.schema else {
            throw fail(.badCard, "not an nsr-edge model card (schema \(root["schema"].map { "\($0)" } ?? "null"))")
        }
        let version = root["version"] as? String
        let parts = version?.split(separator: ".", omittingEmptySubsequences: false) ?? []
        guard let version, parts.count == 2, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }),
              let major = Int(parts[0]) else {
            throw fail(.unsupportedVersion, "model card version \(root["version"].map { "\($0)" } ?? "null") is not MAJOR.MINOR (written by an older nsr-edge; convert again)")
        }
        guard major == ModelCard.major else {
            throw fail(.unsupportedVersion, "model card version \(version) is not supported: this app reads \(ModelCard.major).x (\(major > ModelCard.major ? "update the app" : "convert again"))")
        }
        let model = try obj(root, "model", "model")
        let scale = try int(model, "scale", "model.scale"), channels = try int(model, "channels", "model.channels")
        guard scale >= 1 else { throw fail(.badCard, "model card field model.scale: must be >= 1, got \(scale)") }
        guard channels == 1 || channels == 3 else { throw fail(.badCard, "model card field model.channels: 1 or 3, got \(channels)") }
        let art = try obj(root, "artifact", "artifact")
        let artifact = ArtifactRef(file: try str(art, "file", "artifact.file"), kind: try optStr(art, "kind", "artifact.kind") ?? "file",
                                   sha256: try str(art, "sha256", "artifact.sha256"))
        let t = try obj(root, "tile", "tile")
        let strips = try bool(t, "edge_strips", "tile.edge_strips"), whole = try int(t, "whole_below", "tile.whole_below")
        guard !strips && whole == 0 else {
            throw fail(.badCard, "model card tile: edge_strips=\(strips), whole_below=\(whole) is the reference evaluation layout; an app needs fixed tiles")
        }
        let spec = try TileSpec(tile: try int(t, "tile", "tile.tile"), pad: try int(t, "pad", "tile.pad"),
                                stride: try int(t, "stride", "tile.stride"), padMode: try str(t, "pad_mode", "tile.pad_mode"))
        let io = try obj(root, "io", "io")
        func tensor(_ o: [String: Any], _ p: String) throws -> TensorSpec {
            let dtype = try str(o, "dtype", "\(p).dtype")
            guard ["float32", "float16", "int8", "uint8"].contains(dtype) else { throw fail(.badCard, "model card field \(p).dtype: unknown dtype '\(dtype)'") }
            _ = try arr(o, "range", "\(p).range")
            return TensorSpec(name: try str(o, "name", "\(p).name"), layout: try Layout.parse(try str(o, "layout", "\(p).layout"), "\(p).layout"),
                              dtype: dtype, shape: try ints(try arr(o, "shape", "\(p).shape"), "\(p).shape"))
        }
        let input = try tensor(try first(try arr(io, "inputs", "io.inputs"), "io.inputs"), "io.inputs[]")
        let output = try tensor(try first(try arr(io, "outputs", "io.outputs"), "io.outputs"), "io.outputs[]")
        let methods = try arr(root, "methods", "methods").enumerated().map { i, v -> MethodSpec in
            guard let o = v as? [String: Any] else { throw wrong("methods[\(i)]", "an object", v) }
            let m = MethodSpec(name: try str(o, "name", "methods[].name"), inputShape: try ints(try arr(o, "input_shape", "methods[].input_shape"), "methods[].input_shape"),
                               outputShape: try ints(try arr(o, "output_shape", "methods[].output_shape"), "methods[].output_shape"))
            guard m.inputShape.count == 4, m.outputShape.count == 4 else { throw fail(.badCard, "model card method \(m.name): shapes must be NCHW") }
            return m
        }
        guard let fwd = methods.first, fwd.name == "forward" else { throw fail(.badCard, "model card field methods: the first method must be 'forward'") }
        let wantIn = [1, channels, spec.tile, spec.tile], wantOut = [1, channels, spec.tile * scale, spec.tile * scale]
        guard fwd.inputShape == wantIn, fwd.outputShape == wantOut else {
            throw fail(.badCard, "model card method forward takes \(fwd.inputShape) -> \(fwd.outputShape); the card's tile, channels and scale say \(wantIn) -> \(wantOut)")
        }
        let extra = try optObj(root, "target_extra", "target_extra")
        var dispatch: DispatchPlan?
        if let d = try extra.flatMap({ try optObj($0, "dispatch", "target_extra.dispatch") }) {
            let p = "target_extra.dispatch"
            let stages = try arr(d, "stages", "\(p).stages").map { v -> DispatchStage in
                guard let s = v as? [String: Any] else { throw wrong("\(p).stages[]", "an object", v) }
                let sp = "\(p).stages[]"
                let st = DispatchStage(name: try str(s, "name", "\(sp).name"), methods: try strs(try arr(s, "methods", "\(sp).methods"), "\(sp).methods"),
                                       inputs: try strs(try arr(s, "inputs", "\(sp).inputs"), "\(sp).inputs"),
                                       outputs: try strs(try arr(s, "outputs", "\(sp).outputs"), "\(sp).outputs"), route: try optStr(s, "route", "\(sp).route"))
                guard !st.methods.isEmpty else { throw fail(.badCard, "\(p): stage \(st.name) has no method") }
                guard st.methods.count == 1 || st.route != nil else { throw fail(.badCard, "\(p): stage \(st.name) has \(st.methods.count) methods but no route") }
                return st
            }
            guard !stages.isEmpty else { throw fail(.badCard, "\(p): no stages") }
            dispatch = DispatchPlan(layout: try Layout.parse(try str(d, "layout", "\(p).layout"), "\(p).layout"), stages: stages)
        }
        let runner = try str(root, "runner", "runner")
        if runner == "dispatch" && dispatch == nil { throw fail(.badCard, "model card of runner dispatch has no target_extra.dispatch plan") }
        var quant: [String: QuantParams] = [:]
        if let lm = try extra.flatMap({ try optObj($0, "litert", "target_extra.litert") }).flatMap({ try optObj($0, "methods", "target_extra.litert.methods") }) {
            for (name, v) in lm {
                guard let m = v as? [String: Any] else { throw wrong("target_extra.litert.methods{}", "an object", v) }
                let p = "target_extra.litert.methods{}.inputs[]"
                let d = try first(try arr(m, "inputs", "target_extra.litert.methods{}.inputs"), p)
                let dtype = try str(d, "dtype", "\(p).dtype"), s = try dbl(d, "scale", "\(p).scale"), z = try int(d, "zero_point", "\(p).zero_point")
                if dtype == "int8" || dtype == "uint8" { quant[name] = try QuantParams(dtype: dtype, scale: s, zeroPoint: z) }
            }
        }
        if input.dtype != "float32" && quant["forward"] == nil {
            throw fail(.badCard, "model card input dtype \(input.dtype) without a scale and zero point for it")
        }
        return ModelCard(version: version, modelId: try str(model, "id", "model.id"), taskName: try str(try obj(model, "task", "model.task"), "name", "model.task.name"),
                         scale: scale, channels: channels, runner: runner, artifact: artifact,
                         recipeName: try str(try obj(root, "recipe", "recipe"), "name", "recipe.name"), tileSpec: spec, input: input, output: output,
                         methods: methods, dispatch: dispatch, inputQuant: quant)
    }
}
