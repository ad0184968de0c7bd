// Asserts that a volume call fails with a given typed error code.
import { expect } from "vitest";
import { VolumeError, type VolumeErrorCode } from "../../disks/volume.ts";

export async function expectCode(p: Promise<unknown>, code: VolumeErrorCode): Promise<VolumeError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(VolumeError);
    expect((err as VolumeError).code).toBe(code);
    return err as VolumeError;
  }
  throw new Error(`expected ${code}, but the call succeeded`);
}
