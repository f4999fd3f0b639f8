"""Two-phase (water/air) flow on a MAC grid with Taichi kernels; the pressure solve goes to `precond`.

    limits      every input range (command line, scene files, setters, viewer sliders)
    scene       scene files: the validated `Scene` (imports neither Taichi nor a solver)
    simulation  `Simulation`: the state and `step()`; `SimulationError`
    stats       `FrameStats`, what a step reports, and the clock that times it
    grid        the Taichi fields of a state, pooled by capacity; re-sampling onto another grid
    advect      transport of velocity and level set
    forces      the mouse's push (gravity is added in advect's pass)
    projection  the Poisson system A p = b and the velocity update
    levelset    initial shapes, reinitialisation, water volume
    checks      the non-finite guards every kernel shares
    fields      the cell-centred display fields
    backend     Taichi's start on the CPU or CUDA
"""
