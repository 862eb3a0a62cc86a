package nsredge.core

import org.junit.runner.JUnitCore
import kotlin.system.exitProcess

/** Runs every test class and prints one line CI reads: `N passed, N failed`. */
fun main() {
    val result = JUnitCore.runClasses(CardTest::class.java, TilingTest::class.java, DispatchTest::class.java,
                                      RunnerTest::class.java)
    for (f in result.failures) {
        println("FAILED ${f.testHeader}: ${f.message}")
        println(f.trace.lines().take(8).joinToString("\n"))
    }
    val failed = result.failureCount
    println("${result.runCount - failed} passed, $failed failed")
    exitProcess(if (failed == 0 && result.runCount > 0) 0 else 1)
}
