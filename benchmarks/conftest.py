from benchmarks.ratios import report


def pytest_terminal_summary(terminalreporter):
    text = report()
    if text:
        terminalreporter.write_sep("=", "speed ratios (same run)")
        terminalreporter.write_line(text)
