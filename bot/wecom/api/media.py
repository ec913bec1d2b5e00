from wechatpy.work.client.api import WeChatMedia


class MediaAPI(WeChatMedia):
    """临时素材 — doc 90253. Uploads take bytes, so a retried request re-sends the same body
    (a file object would be consumed by the first attempt)."""

    def upload(self, media_type: str, media: bytes | tuple, filename: str = "media.png",
               content_type: str = "application/octet-stream") -> dict:
        if isinstance(media, tuple):  # wechatpy's call shape: (filename, fileobj-or-bytes[, type])
            filename, media, *rest = media
            content_type = rest[0] if rest else content_type
        if hasattr(media, "read"):
            media = media.read()
        if len(media) <= 5:
            raise ValueError("WeCom rejects media of 5 bytes or less")
        return self._post("media/upload", params={"type": media_type},
                          files={"media": (filename, bytes(media), content_type)})
