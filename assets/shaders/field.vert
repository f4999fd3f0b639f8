#version 330
// A full-screen quad from gl_VertexID (no vertex buffer): draw 4 vertices as a triangle strip.
out vec2 v_uv;

void main() {
    vec2 corner = vec2(float(gl_VertexID & 1), float(gl_VertexID >> 1));
    v_uv = corner;  // (0, 0) is the bottom-left of the domain
    gl_Position = vec4(corner * 2.0 - 1.0, 0.0, 1.0);
}
