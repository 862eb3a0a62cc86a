import SwiftUI

@main
struct NsrEdgeDemoApp: App {
    @State private var model = DemoModel(camera: CameraActor())

    var body: some Scene {
        WindowGroup {
            ContentView(model: model)
                .task { await model.start() }
        }
    }
}
