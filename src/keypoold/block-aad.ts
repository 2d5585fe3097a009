/** Associated data that binds sealed records to their identity. */
export const blockAad = (link: string, blockId: number, sealedFrom: number) => `blk|${link}|${blockId}|${sealedFrom}`;
export const keyAad = (keyId: string) => `key|${keyId}`;
