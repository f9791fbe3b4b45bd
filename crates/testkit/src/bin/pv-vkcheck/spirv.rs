//! The compute shader pv-vkcheck dispatches, assembled here as SPIR-V 1.0
//! words (no shader compiler needed). It is what this GLSL compiles to:
//!
//! ```glsl
//! #version 450
//! layout(local_size_x = 64) in;
//! layout(std430, set = 0, binding = 0) buffer B { uint data[]; };
//! layout(push_constant) uniform P { uint rounds; };
//! void main() {
//!     uint x = gl_GlobalInvocationID.x;
//!     for (uint r = 0; r < rounds; r++) x = x * 1664525u + 1013904223u;
//!     data[gl_GlobalInvocationID.x] = x;
//! }
//! ```
//!
//! [`expected`] computes the same value on the CPU.

/// Invocations per workgroup (`local_size_x`).
pub const LOCAL_SIZE: u32 = 64;

/// The value the shader stores at `index` after `rounds` rounds.
pub fn expected(index: u32, rounds: u32) -> u32 {
    let mut x = index;
    for _ in 0..rounds {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
    }
    x
}

/// A minimal SPIR-V word writer.
struct Asm {
    words: Vec<u32>,
}

impl Asm {
    fn op(&mut self, opcode: u16, operands: &[u32]) {
        let count = (operands.len() + 1) as u32;
        self.words.push(count << 16 | u32::from(opcode));
        self.words.extend_from_slice(operands);
    }
}

/// A literal string as SPIR-V words (NUL-terminated, zero-padded).
fn string(s: &str) -> Vec<u32> {
    let mut bytes = s.as_bytes().to_vec();
    bytes.push(0);
    while !bytes.len().is_multiple_of(4) {
        bytes.push(0);
    }
    bytes
        .chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

// Opcodes.
const OP_CAPABILITY: u16 = 17;
const OP_MEMORY_MODEL: u16 = 14;
const OP_ENTRY_POINT: u16 = 15;
const OP_EXECUTION_MODE: u16 = 16;
const OP_DECORATE: u16 = 71;
const OP_MEMBER_DECORATE: u16 = 72;
const OP_TYPE_VOID: u16 = 19;
const OP_TYPE_BOOL: u16 = 20;
const OP_TYPE_INT: u16 = 21;
const OP_TYPE_VECTOR: u16 = 23;
const OP_TYPE_RUNTIME_ARRAY: u16 = 29;
const OP_TYPE_STRUCT: u16 = 30;
const OP_TYPE_POINTER: u16 = 32;
const OP_TYPE_FUNCTION: u16 = 33;
const OP_CONSTANT: u16 = 43;
const OP_FUNCTION: u16 = 54;
const OP_FUNCTION_END: u16 = 56;
const OP_VARIABLE: u16 = 59;
const OP_LOAD: u16 = 61;
const OP_STORE: u16 = 62;
const OP_ACCESS_CHAIN: u16 = 65;
const OP_IADD: u16 = 128;
const OP_IMUL: u16 = 132;
const OP_ULESS_THAN: u16 = 176;
const OP_PHI: u16 = 245;
const OP_LOOP_MERGE: u16 = 246;
const OP_LABEL: u16 = 248;
const OP_BRANCH: u16 = 249;
const OP_BRANCH_CONDITIONAL: u16 = 250;
const OP_RETURN: u16 = 253;

// Enumerants.
const CAPABILITY_SHADER: u32 = 1;
const ADDRESSING_LOGICAL: u32 = 0;
const MEMORY_GLSL450: u32 = 1;
const MODEL_GL_COMPUTE: u32 = 5;
const MODE_LOCAL_SIZE: u32 = 17;
const DEC_BLOCK: u32 = 2;
const DEC_BUFFER_BLOCK: u32 = 3;
const DEC_ARRAY_STRIDE: u32 = 6;
const DEC_BUILTIN: u32 = 11;
const DEC_BINDING: u32 = 33;
const DEC_DESCRIPTOR_SET: u32 = 34;
const DEC_OFFSET: u32 = 35;
const BUILTIN_GLOBAL_INVOCATION_ID: u32 = 28;
const SC_INPUT: u32 = 1;
const SC_UNIFORM: u32 = 2;
const SC_PUSH_CONSTANT: u32 = 9;

/// The shader module's words (see the module docs).
pub fn lcg_shader() -> Vec<u32> {
    // Result ids.
    const MAIN: u32 = 1;
    const GID: u32 = 2;
    const VOID: u32 = 3;
    const FN: u32 = 4;
    const UINT: u32 = 5;
    const V3UINT: u32 = 6;
    const PTR_IN_V3: u32 = 7;
    const RTARR: u32 = 8;
    const BLOCK: u32 = 9;
    const PTR_U_BLOCK: u32 = 10;
    const BUF: u32 = 11;
    const PTR_U_UINT: u32 = 12;
    const PC: u32 = 13;
    const PTR_PC: u32 = 14;
    const PCV: u32 = 15;
    const PTR_PC_UINT: u32 = 16;
    const PTR_IN_UINT: u32 = 17;
    const BOOL: u32 = 18;
    const C0: u32 = 19;
    const C1: u32 = 20;
    const CA: u32 = 21;
    const CC: u32 = 22;
    const ENTRY: u32 = 23;
    const GX_PTR: u32 = 24;
    const I: u32 = 25;
    const RP: u32 = 26;
    const ROUNDS: u32 = 27;
    const HEADER: u32 = 28;
    const X: u32 = 29;
    const R: u32 = 30;
    const COND: u32 = 31;
    const BODY: u32 = 32;
    const XM: u32 = 33;
    const XN: u32 = 34;
    const CONT: u32 = 35;
    const RN: u32 = 36;
    const MERGE: u32 = 37;
    const DST: u32 = 38;
    const BOUND: u32 = 39;

    let mut a = Asm {
        words: vec![0x0723_0203, 0x0001_0000, 0, BOUND, 0],
    };
    a.op(OP_CAPABILITY, &[CAPABILITY_SHADER]);
    a.op(OP_MEMORY_MODEL, &[ADDRESSING_LOGICAL, MEMORY_GLSL450]);
    let mut ep = vec![MODEL_GL_COMPUTE, MAIN];
    ep.extend(string("main"));
    ep.push(GID);
    a.op(OP_ENTRY_POINT, &ep);
    a.op(
        OP_EXECUTION_MODE,
        &[MAIN, MODE_LOCAL_SIZE, LOCAL_SIZE, 1, 1],
    );
    a.op(
        OP_DECORATE,
        &[GID, DEC_BUILTIN, BUILTIN_GLOBAL_INVOCATION_ID],
    );
    a.op(OP_DECORATE, &[RTARR, DEC_ARRAY_STRIDE, 4]);
    a.op(OP_MEMBER_DECORATE, &[BLOCK, 0, DEC_OFFSET, 0]);
    a.op(OP_DECORATE, &[BLOCK, DEC_BUFFER_BLOCK]);
    a.op(OP_DECORATE, &[BUF, DEC_DESCRIPTOR_SET, 0]);
    a.op(OP_DECORATE, &[BUF, DEC_BINDING, 0]);
    a.op(OP_MEMBER_DECORATE, &[PC, 0, DEC_OFFSET, 0]);
    a.op(OP_DECORATE, &[PC, DEC_BLOCK]);

    a.op(OP_TYPE_VOID, &[VOID]);
    a.op(OP_TYPE_FUNCTION, &[FN, VOID]);
    a.op(OP_TYPE_INT, &[UINT, 32, 0]);
    a.op(OP_TYPE_VECTOR, &[V3UINT, UINT, 3]);
    a.op(OP_TYPE_POINTER, &[PTR_IN_V3, SC_INPUT, V3UINT]);
    a.op(OP_VARIABLE, &[PTR_IN_V3, GID, SC_INPUT]);
    a.op(OP_TYPE_RUNTIME_ARRAY, &[RTARR, UINT]);
    a.op(OP_TYPE_STRUCT, &[BLOCK, RTARR]);
    a.op(OP_TYPE_POINTER, &[PTR_U_BLOCK, SC_UNIFORM, BLOCK]);
    a.op(OP_VARIABLE, &[PTR_U_BLOCK, BUF, SC_UNIFORM]);
    a.op(OP_TYPE_POINTER, &[PTR_U_UINT, SC_UNIFORM, UINT]);
    a.op(OP_TYPE_STRUCT, &[PC, UINT]);
    a.op(OP_TYPE_POINTER, &[PTR_PC, SC_PUSH_CONSTANT, PC]);
    a.op(OP_VARIABLE, &[PTR_PC, PCV, SC_PUSH_CONSTANT]);
    a.op(OP_TYPE_POINTER, &[PTR_PC_UINT, SC_PUSH_CONSTANT, UINT]);
    a.op(OP_TYPE_POINTER, &[PTR_IN_UINT, SC_INPUT, UINT]);
    a.op(OP_TYPE_BOOL, &[BOOL]);
    a.op(OP_CONSTANT, &[UINT, C0, 0]);
    a.op(OP_CONSTANT, &[UINT, C1, 1]);
    a.op(OP_CONSTANT, &[UINT, CA, 1_664_525]);
    a.op(OP_CONSTANT, &[UINT, CC, 1_013_904_223]);

    a.op(OP_FUNCTION, &[VOID, MAIN, 0, FN]);
    a.op(OP_LABEL, &[ENTRY]);
    a.op(OP_ACCESS_CHAIN, &[PTR_IN_UINT, GX_PTR, GID, C0]);
    a.op(OP_LOAD, &[UINT, I, GX_PTR]);
    a.op(OP_ACCESS_CHAIN, &[PTR_PC_UINT, RP, PCV, C0]);
    a.op(OP_LOAD, &[UINT, ROUNDS, RP]);
    a.op(OP_BRANCH, &[HEADER]);

    a.op(OP_LABEL, &[HEADER]);
    a.op(OP_PHI, &[UINT, X, I, ENTRY, XN, CONT]);
    a.op(OP_PHI, &[UINT, R, C0, ENTRY, RN, CONT]);
    a.op(OP_ULESS_THAN, &[BOOL, COND, R, ROUNDS]);
    a.op(OP_LOOP_MERGE, &[MERGE, CONT, 0]);
    a.op(OP_BRANCH_CONDITIONAL, &[COND, BODY, MERGE]);

    a.op(OP_LABEL, &[BODY]);
    a.op(OP_IMUL, &[UINT, XM, X, CA]);
    a.op(OP_IADD, &[UINT, XN, XM, CC]);
    a.op(OP_BRANCH, &[CONT]);

    a.op(OP_LABEL, &[CONT]);
    a.op(OP_IADD, &[UINT, RN, R, C1]);
    a.op(OP_BRANCH, &[HEADER]);

    a.op(OP_LABEL, &[MERGE]);
    a.op(OP_ACCESS_CHAIN, &[PTR_U_UINT, DST, BUF, C0, I]);
    a.op(OP_STORE, &[DST, X]);
    a.op(OP_RETURN, &[]);
    a.op(OP_FUNCTION_END, &[]);
    a.words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_bound() {
        let w = lcg_shader();
        assert_eq!(w[0], 0x0723_0203);
        assert_eq!(w[3], 39);
        // Every instruction's word count walks exactly to the end.
        let mut at = 5;
        while at < w.len() {
            let n = (w[at] >> 16) as usize;
            assert!(n > 0);
            at += n;
        }
        assert_eq!(at, w.len());
    }

    #[test]
    fn expected_values() {
        assert_eq!(expected(7, 0), 7);
        assert_eq!(expected(0, 1), 1_013_904_223);
        assert_eq!(
            expected(1, 2),
            expected(1, 1)
                .wrapping_mul(1_664_525)
                .wrapping_add(1_013_904_223)
        );
    }
}
