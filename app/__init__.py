"""The viewer (imgui-bundle + moderngl), the headless runner and recording; reads the sim's fields and stats."""
