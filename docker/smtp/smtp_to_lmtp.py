"""SMTP on :25 ($SMTP_PORT) that hands every message to an LMTP server
(Dovecot at $LMTP_HOST:$LMTP_PORT, default dovecot:24)."""
import asyncio
import os
import smtplib

from aiosmtpd.controller import Controller

LMTP_HOST = os.environ.get("LMTP_HOST", "dovecot")
LMTP_PORT = int(os.environ.get("LMTP_PORT", "24"))
SMTP_PORT = int(os.environ.get("SMTP_PORT", "25"))


class ToLmtp:
    async def handle_DATA(self, server, session, envelope):
        def deliver():
            with smtplib.LMTP(LMTP_HOST, LMTP_PORT) as lmtp:
                return lmtp.sendmail(
                    envelope.mail_from or "", envelope.rcpt_tos, envelope.original_content
                )

        try:
            refused = await asyncio.get_running_loop().run_in_executor(None, deliver)
        except smtplib.SMTPRecipientsRefused as e:
            return "550 recipients refused: %s" % ", ".join(e.recipients)
        except (OSError, smtplib.SMTPException) as e:
            return "451 LMTP delivery failed: %s" % e
        if refused:
            return "250 OK, but refused: %s" % ", ".join(refused)
        return "250 OK"


if __name__ == "__main__":
    controller = Controller(ToLmtp(), hostname=os.environ.get("SMTP_HOST", "0.0.0.0"), port=SMTP_PORT)
    controller.start()
    print("smtp->lmtp relay on :%d -> %s:%d" % (SMTP_PORT, LMTP_HOST, LMTP_PORT), flush=True)
    try:
        asyncio.get_event_loop().run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()
