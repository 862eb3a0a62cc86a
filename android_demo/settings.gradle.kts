// nsr-edge Android demo: one app module. The pure tiling core (tiling-core/, no Android API, tested on the JVM by
// tiling-core/run_tests.sh) is compiled into the app as a source folder, so this build and the JVM tests compile
// the same files.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "nsr-edge-demo"
include(":app")
