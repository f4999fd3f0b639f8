#version 330
// Colours one simulation field. u_field holds, per cell centre, r = the level set phi (domain units,
// water < 0), g = the scalar of the render mode and b = 1 in solid cells, 0 in the fluid. Phase mode
// draws water and air with an anti-aliased interface; the other modes map g through a colormap row and
// trace the interface on top. Solids are drawn over every mode in their own colour, with an outline.
uniform sampler2D u_field;
uniform sampler2D u_lut;   // one colormap per row, 256 texels wide
uniform int u_phase;       // 1: phase mode, 0: colormapped scalar
uniform float u_lut_row;   // (row + 0.5) / rows
uniform vec2 u_range;      // scalar values mapped to the ends of the colormap

in vec2 v_uv;
out vec4 f_color;

const vec3 WATER_DEEP = vec3(0.04, 0.20, 0.47);
const vec3 WATER_HIGH = vec3(0.13, 0.42, 0.75);
const vec3 WATER_RIM = vec3(0.45, 0.75, 0.95);
const vec3 AIR_LOW = vec3(0.90, 0.93, 0.96);
const vec3 AIR_HIGH = vec3(0.97, 0.98, 0.99);
const vec3 SURFACE = vec3(0.02, 0.10, 0.25);
const vec3 SOLID = vec3(0.42, 0.36, 0.30);
const vec3 SOLID_EDGE = vec3(0.20, 0.16, 0.12);

void main() {
    vec3 f = texture(u_field, v_uv).rgb;
    float phi = f.r;
    float px = max(fwidth(phi), 1e-7);                    // change of phi across one pixel
    float water = clamp(0.5 - phi / px, 0.0, 1.0);        // pixel coverage by water
    float surface = clamp(1.25 - abs(phi) / px, 0.0, 1.0);  // a line about two pixels wide
    vec3 colour;
    if (u_phase == 1) {
        vec3 w = mix(WATER_DEEP, WATER_HIGH, clamp(v_uv.y * 1.5, 0.0, 1.0));
        w = mix(w, WATER_RIM, 0.6 * (1.0 - smoothstep(0.0, 0.03, -phi)));  // a light band under the surface
        vec3 a = mix(AIR_LOW, AIR_HIGH, v_uv.y);
        colour = mix(mix(a, w, water), SURFACE, 0.8 * surface);
    } else {
        float t = clamp((f.g - u_range.x) / max(u_range.y - u_range.x, 1e-30), 0.0, 1.0);
        colour = texture(u_lut, vec2((t * 255.0 + 0.5) / 256.0, u_lut_row)).rgb;
        colour = mix(colour, vec3(1.0), 0.6 * surface);
    }
    float edge = f.b - 0.5;                                // the solid's boundary: half way between cells
    float ex = max(fwidth(edge), 1e-7);
    float solid = clamp(0.5 + edge / ex, 0.0, 1.0);
    float outline = clamp(1.25 - abs(edge) / ex, 0.0, 1.0);
    colour = mix(mix(colour, SOLID, solid), SOLID_EDGE, 0.8 * outline * step(1e-3, f.b));
    f_color = vec4(colour, 1.0);
}
